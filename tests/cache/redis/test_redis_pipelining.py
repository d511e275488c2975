"""Commands of one loop turn go to a real redis-server together (proxy/cache/redis/pipelining.py): each caller
gets its own answer, Redis sees one MGET and one pipeline, and a failure reaches every caller and the breaker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.cache.redis.tier import RedisTier
from proxy.config.settings import RedisConfig
from proxy.errors import CacheBackendError
from proxy.policy.entry import CachedResponse
from tests.support.factories import RedisFactory
from tests.support.redis_tier import h, with_redis


async def _tier(url: str, **fields: object) -> RedisTier:
    config = with_redis(url, **fields).redis
    assert isinstance(config, RedisConfig)
    tier = RedisTier(config)
    await tier.start()
    return tier


@pytest.fixture
async def tier(redis_url: str) -> AsyncIterator[RedisTier]:
    t = await _tier(redis_url)
    yield t
    await t.close()


def _entry(body: bytes) -> CachedResponse:
    return CachedResponse(status=200, headers=[("Content-Type", "text/plain")], body=body, stored_at=time.monotonic(),
                          ttl=60)


async def _calls(redis: aioredis.Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_gets_and_writes_of_one_turn_are_one_mget_and_one_pipeline(
    tier: RedisTier, redis: aioredis.Redis,
) -> None:
    keys = [f"k{i}" for i in range(30)]
    await redis.config_resetstat()
    now = time.monotonic()
    stored = await asyncio.gather(*(tier.set(k, _entry(k.encode()), now=now, event=b"") for k in keys[:20]))
    assert stored == [True] * 20
    assert await _calls(redis, "evalsha") == 20  # one each, in one pipeline
    assert all([await redis.exists(f"sidecache:v1:entry:{h(k)}") for k in keys[:20]])
    got = await asyncio.gather(*(tier.get(k) for k in keys))
    assert [e.body if e is not None else None for e in got] == [k.encode() for k in keys[:20]] + [None] * 10
    assert await _calls(redis, "mget") == 1 and await _calls(redis, "get") == 0


async def test_leases_asked_together_are_each_answered_and_held(tier: RedisTier, redis: aioredis.Redis) -> None:
    await tier.set("filled", _entry(b"there"), now=time.monotonic(), event=b"")
    await redis.script_flush()  # as after a restart: the pipeline loads its script once more
    claims = await asyncio.gather(*(tier.acquire(k, f"token-{k}", 5000) for k in ["a", "b", "c", "filled"]))
    assert [c.acquired for c in claims] == [True] * 4
    assert claims[3].entry is not None and claims[3].entry.body == b"there"
    assert [await redis.get(f"sidecache:v1:lease:{h(k)}") for k in "abc"] == [b"token-a", b"token-b", b"token-c"]
    again = await asyncio.gather(*(tier.acquire(k, "other", 5000) for k in "ab"))
    assert [c.acquired for c in again] == [False, False] and all(0 < c.lease_left <= 5 for c in again)


async def test_a_caller_that_leaves_does_not_break_the_batch_for_the_others(tier: RedisTier) -> None:
    now = time.monotonic()
    await asyncio.gather(*(tier.set(k, _entry(k.encode()), now=now, event=b"") for k in "xyz"))
    tasks = [asyncio.ensure_future(tier.get(k)) for k in "xyz"]
    await asyncio.sleep(0)  # every GET is queued for this turn's MGET
    tasks[1].cancel()
    x, y, z = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(y, asyncio.CancelledError)
    assert isinstance(x, CachedResponse) and x.body == b"x" and isinstance(z, CachedResponse) and z.body == b"z"


async def test_a_stalled_redis_fails_every_caller_and_counts_each_with_the_breaker(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    assert server.proc is not None
    t = await _tier(server.url())
    threshold = t.breaker.threshold
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        got = await asyncio.gather(*(t.get(f"k{i}") for i in range(threshold)), return_exceptions=True)
        assert all(isinstance(g, CacheBackendError) for g in got) and len({id(g) for g in got}) == threshold
        assert not t.breaker.closed  # one MGET of `threshold` GETs counts as that many failed calls
        assert sum(t.errors.values()) == threshold
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        await t.close()
