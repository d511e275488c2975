"""Tests of `proxy.cache`: the memory tier as a table, and the cross-process fill lease against a real
redis-server (redis/ holds the Redis tier's own tests)."""
