"""Tests of `proxy.config`: settings and rules files as tables of input and exact error text, flag and
environment layering, and reloading (POST /rules/reload, SIGHUP) through a real proxy and process."""
