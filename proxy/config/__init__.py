"""What the operator wrote: settings, route rules, units and reloading.

Decoded strictly and compiled once at start (or reload); nothing here runs per request except rule lookups.
Imports only `proxy.errors`.
"""
