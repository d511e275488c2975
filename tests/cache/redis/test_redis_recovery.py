"""Coming back from a Redis outage: soon after Redis answers again, with no lease left behind and no second trip."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.config.units import Duration
from tests.support.client import get
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.redis_tier import RULES, cache_key_of, h, state_changes, with_redis
from tests.support.upstream import Upstream
from tests.support.waiting import until


async def test_a_stall_under_load_ends_soon_after_redis_answers_again(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecache")
    server = redis_factory()
    assert server.proc is not None
    pid = server.proc.pid
    # A long probe_max: were the backoff doubled by each call in flight when the breaker opened (the bug), the
    # next probe would be 30 s away; doubled per failed probe only, it is a fraction of a second.
    proxy = await make_proxy(RULES, config=with_redis(server.url(), probe_min=Duration.of("100ms"),
                                                      probe_max=Duration.of("30s")))
    assert proxy.tiers.redis is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        results = await asyncio.gather(*(get(http, proxy.proxy_url + f"/players/stall{i}") for i in range(40)))
        assert {r.status for r in results} == {200}
        assert not proxy.tiers.redis.breaker.closed
    finally:
        os.kill(pid, signal.SIGCONT)

    async def back() -> bool:
        return proxy.tiers.redis is not None and proxy.tiers.redis.breaker.closed

    await until(back, timeout=5.0)
    cache_status = (await get(http, proxy.proxy_url + "/players/after")).cache_status
    assert "redis-unavailable" not in cache_status
    assert state_changes(caplog) == ["unavailable", "back"]


async def test_no_second_trip_when_redis_is_healthy_after_a_restart(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecache")
    server = redis_factory()
    proxy = await make_proxy(RULES, config=with_redis(server.url()))
    assert proxy.tiers.redis is not None
    await asyncio.gather(*(get(http, proxy.proxy_url + f"/players/warm{i}") for i in range(30)))  # the whole pool
    server.kill()
    for i in range(5):
        await get(http, proxy.proxy_url + f"/players/down{i}")
    assert not proxy.tiers.redis.breaker.closed
    server.start()  # same port, empty

    async def back() -> bool:
        return proxy.tiers.redis is not None and proxy.tiers.redis.breaker.closed

    await until(back, timeout=5.0)
    # Every pooled connection is used at once: one left from before the restart would fail, and three would trip.
    results = await asyncio.gather(*(get(http, proxy.proxy_url + f"/players/new{i}") for i in range(40)))
    assert [r.status for r in results] == [200] * 40
    assert not [r.cache_status for r in results if "redis-unavailable" in r.cache_status]
    assert state_changes(caplog) == ["unavailable", "back"]
    assert proxy.tiers.redis.breaker.opened == 1


async def test_a_fill_that_finishes_during_a_stall_gives_its_lease_back_once_redis_answers(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    assert server.proc is not None
    pid = server.proc.pid
    upstream.reply("/players/slow", delay=0.5)
    # A lease far longer than the test: if it goes, it was given back, not lapsed.
    config = with_redis(server.url(), lease=Duration.of("60s"), timeout=Duration.of("100ms"))
    a, b = await make_proxy(RULES, config=config), await make_proxy(RULES, config=config)
    lease = f"sidecache:v1:lease:{h(cache_key_of(a, '/players/slow'))}"
    client = aioredis.from_url(server.url())
    try:
        holder = asyncio.ensure_future(get(http, a.proxy_url + "/players/slow"))
        await until(lambda: client.exists(lease))  # A holds the lease and is fetching
        os.kill(pid, signal.SIGSTOP)
        try:
            others = await asyncio.gather(*(get(http, a.proxy_url + f"/players/other{i}") for i in range(3)))
            assert [r.status for r in others] == [200] * 3 and a.tiers.degraded  # A marked Redis down meanwhile
            status = (await holder).status  # A's fill ends while Redis answers nothing: its store cannot land
            assert status == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: _gone(client, lease), timeout=5.0)
        t0 = time.monotonic()
        answer = await asyncio.wait_for(get(http, b.proxy_url + "/players/slow"), 10.0)
        status, cache_status = answer.status, answer.cache_status
        assert status == 200 and "fwd=miss" in cache_status  # B fetched at once: nobody's lease to wait out
        assert time.monotonic() - t0 < 30  # never the lease's 60 s
    finally:
        await client.aclose()


async def _gone(client: aioredis.Redis, key: str) -> bool:
    return not await client.exists(key)
