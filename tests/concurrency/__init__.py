"""Tests of `proxy.concurrency`: the coalescer, the batcher and the breaker with plain asyncio and hand-driven
clocks, knowing nothing of HTTP or Redis, as the code under test does not."""
