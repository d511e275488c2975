"""The caching decisions as pure functions (hishel's sans-I/O core): cache keys, freshness, the origin's policy,
validators, and the stored entry itself.

No I/O: nothing here imports aiohttp, redis or asyncio, so every decision is tested as a table.
"""
