"""Waiting on another process's lease: woken by its event, never held up by a Redis that hangs, dies or goes quiet."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.cache.events import Filled, encode_event
from proxy.cache.lease import Lease, LeaseCoalescer
from proxy.cache.redis.tier import RedisTier
from proxy.config.settings import RedisConfig
from proxy.config.units import Duration
from proxy.policy.entry import CachedResponse
from tests.support.client import get
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.redis_tier import RULES, cache_key_of, h, with_redis
from tests.support.upstream import Upstream
from tests.support.waiting import until

UPSTREAM = 1.0  # how long the origin takes in the multi-process tests


@pytest.mark.parametrize("failure", ["hung", "killed"])
async def test_a_lease_waiter_fetches_itself_when_redis_fails_under_it(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
    failure: str,
) -> None:
    server = redis_factory()
    assert server.proc is not None
    pid = server.proc.pid
    upstream.reply("/players/slow", delay=UPSTREAM)
    config = with_redis(server.url(), timeout=Duration.of("50ms"), probe_min=Duration.of("500ms"),
                        probe_max=Duration.of("10s"))  # the breaker stays closed: B makes no other Redis call
    a, b = await make_proxy(RULES, config=config), await make_proxy(RULES, config=config)

    async def timed(url: str) -> tuple[int, str, float]:
        t0 = time.perf_counter()
        answer = await get(http, url)
        status, cache_status = answer.status, answer.cache_status
        return status, cache_status, time.perf_counter() - t0

    holder = asyncio.ensure_future(timed(a.proxy_url + "/players/slow"))
    await asyncio.sleep(0.1)  # A holds the lease and is fetching
    waiter = asyncio.ensure_future(timed(b.proxy_url + "/players/slow"))
    await asyncio.sleep(0.1)  # B waits on A's lease
    if failure == "hung":
        os.kill(pid, signal.SIGSTOP)  # our own redis-server: up, but it answers nothing
    else:
        server.kill()
    try:
        (a_status, _, a_took), (b_status, b_cache_status, b_took) = await asyncio.wait_for(
            asyncio.gather(holder, waiter), 5 * UPSTREAM)
    finally:
        if failure == "hung":
            os.kill(pid, signal.SIGCONT)
    assert (a_status, b_status) == (200, 200)
    assert a_took < 1.5 * UPSTREAM
    assert b_took < 1.5 * UPSTREAM  # it was 6 s hung (the lease and then some) and 3.4 s killed
    assert b_cache_status.startswith("sidecache; fwd=miss; fwd-status=200")
    assert upstream.hits["/players/slow"] == 2  # A's answer could not reach B through a Redis that failed


async def test_a_lease_waiter_adopts_on_the_holders_event_while_the_lease_is_still_held(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    proxy = await make_proxy(RULES, config=with_redis(redis_url))
    tier = proxy.tiers.redis
    assert tier is not None
    await until(lambda: tier.subscribed)
    key = cache_key_of(proxy, "/players/told")
    lease = f"sidecache:v1:lease:{h(key)}"
    await redis.set(lease, "another-process", px=5000)
    pending = asyncio.ensure_future(get(http, proxy.proxy_url + "/players/told"))
    await asyncio.sleep(0.35)  # a few lease checks in: the lease is held, so it keeps waiting
    assert not pending.done() and upstream.hits["/players/told"] == 0
    now = time.time()
    stored = CachedResponse(status=200, headers=[("Content-Type", "application/json")], body=b'{"by": "another"}',
                            stored_at=now, ttl=60.0, route="player")
    await tier.set(key, stored, now=now, event=encode_event(Filled("another-process", key)))  # lease left alone
    answer = await asyncio.wait_for(pending, 1.0)
    status, cache_status, body = answer.status, answer.cache_status, answer.body
    assert (status, body) == (200, b'{"by": "another"}') and "collapsed" in cache_status
    assert await redis.pttl(lease) > 0  # still held: only the event could have told the waiter
    assert upstream.hits["/players/told"] == 0


@pytest.fixture
async def tier(redis_url: str) -> AsyncIterator[RedisTier]:
    """The Redis tier on its own, for LeaseCoalescer without a proxy around it."""
    t = RedisTier(RedisConfig(url=redis_url, timeout=Duration.of("250ms")))
    await t.start()
    yield t
    await t.close()


def coalescer(tier: RedisTier, *, max_wait: float = 30.0) -> tuple[LeaseCoalescer, list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[object, object, None]) -> None:
        tasks.append(asyncio.ensure_future(coro))

    return LeaseCoalescer(tier, lease=5.0, max_wait=max_wait, origin="me", clock=time.time, spawn=spawn), tasks


def _refuse(entry: CachedResponse) -> str:
    raise AssertionError(f"adopted {entry!r}, though nobody stored anything")


async def test_a_lease_that_vanishes_without_an_event_is_noticed_and_taken_over(
    tier: RedisTier, redis: aioredis.Redis,
) -> None:
    lease = f"sidecache:v1:lease:{h('k')}"
    await redis.set(lease, "another-process", px=5000)
    leases, tasks = coalescer(tier)

    async def fetch(_lease: Lease | None) -> bytes | str | None:
        return await redis.get(lease)  # who holds the lease while we fetch

    t0 = time.perf_counter()
    running = asyncio.ensure_future(leases.run("k", fetch, _refuse))
    await asyncio.sleep(0.05)
    await redis.delete(lease)  # the holder's release went through, its event did not reach us
    holder = await running
    took = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    assert holder is not None and holder != b"another-process"  # we fetched under a lease of our own
    assert took < 0.5  # one lease check (100 ms), not the 5 s lease
    assert await redis.exists(lease) == 0  # given back after a fetch that stored nothing


async def test_a_lease_waiter_waits_at_most_max_wait_in_all(tier: RedisTier, redis: aioredis.Redis) -> None:
    lease = f"sidecache:v1:lease:{h('k')}"
    await redis.set(lease, "another-process", px=5000)
    leases, _ = coalescer(tier, max_wait=0.3)

    async def fetch(_lease: Lease | None) -> str:
        return "fetched"

    t0 = time.perf_counter()
    assert await leases.run("k", fetch, _refuse) == "fetched"
    assert 0.3 <= time.perf_counter() - t0 < 0.6
    assert await redis.get(lease) == b"another-process"  # its holder's still: we fetched without one
