"""Tests of `proxy.serving`, end to end through a real proxy in front of a real aiohttp upstream on 127.0.0.1:
the ruled and origin-governed caching paths, coalescing, batching, pass-through and streaming, the listener
against raw sockets, the upstream pool, and the right answer for every client."""
