"""The right answer with Redis shared by several processes (issue 11, items 8 and 9): purges are final across
processes, and a client's `no-cache` reaches the upstream even when another process holds a fresh copy."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import msgspec
import redis.asyncio as aioredis

from tests.support.client import get
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.redis_tier import with_redis
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
client_no_cache = "revalidate"
tags = ["player:{name}"]
"""



async def test_a_purge_on_one_process_beats_a_fill_in_flight_on_another(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    a = await make_proxy(RULES, config=with_redis(redis_url))
    b = await make_proxy(RULES, config=with_redis(redis_url))
    upstream.reply("/players/judge", delay=0.4)
    slow = asyncio.ensure_future(get(http, b.proxy_url + "/players/judge"))
    await asyncio.sleep(0.15)
    async with http.post(a.admin_url + "/purge", json={"tag": "player:judge"}) as r:
        assert r.status == 200
    status, h, _ = await slow
    assert status == 200 and "stored" not in h["Cache-Status"]
    await asyncio.sleep(0.3)  # anything B might still write to Redis
    assert [k for k in await redis.keys("sidecache:v1:entry:*")] == []
    upstream.reply("/players/judge")
    _, h, _ = await get(http, a.proxy_url + "/players/judge")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    assert upstream.hits["/players/judge"] == 2


async def test_client_no_cache_reaches_the_upstream_although_redis_holds_a_fresh_copy(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
) -> None:
    a = await make_proxy(RULES, config=with_redis(redis_url))
    b = await make_proxy(RULES, config=with_redis(redis_url))
    await get(http, a.proxy_url + "/players/soto")
    await asyncio.sleep(0.2)  # the write reaches Redis
    _, h, _ = await get(http, b.proxy_url + "/players/soto", headers={"Cache-Control": "no-cache"})
    assert "collapsed" not in h["Cache-Status"]
    assert upstream.hits["/players/soto"] == 2


async def test_a_stale_copy_survives_another_process_refilling_it_when_redis_and_upstream_then_fail(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    now = [1000.0]
    rules = RULES + 'stale_if_error = "10m"\n'
    a = await make_proxy(rules, config=with_redis(server.url()), clock=lambda: now[0])
    b = await make_proxy(rules, config=with_redis(server.url()), clock=lambda: now[0])
    await get(http, a.proxy_url + "/players/ohtani")
    await asyncio.sleep(0.2)
    await get(http, b.proxy_url + "/players/ohtani")  # B holds the copy in memory
    now[0] += 301
    await get(http, a.proxy_url + "/players/ohtani")  # A refills it: B is told, and drops its memory copy
    await asyncio.sleep(0.2)
    upstream.reply("/players/ohtani", status=503, body=b"down")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # Redis hangs, and the upstream fails: a double fault
    try:
        now[0] += 301
        status, h, body = await get(http, b.proxy_url + "/players/ohtani")
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert (status, "detail=stale-if-error" in h["Cache-Status"]) == (200, True)
    assert msgspec.json.decode(body)["path"] == "/players/ohtani"


async def test_two_processes_filling_two_origins_at_once_each_answer_their_own_cors(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
) -> None:
    """The second process waits on the first one's Redis lease, which stores another Origin's variant (a marker
    under the key): it never answers that, nor the marker, but its own Origin's answer."""
    upstream.reply("/players/judge", delay=0.3, vary_on="Origin", headers={"Vary": "Origin"})
    a = await make_proxy(RULES, config=with_redis(redis_url))
    b = await make_proxy(RULES, config=with_redis(redis_url))
    first = asyncio.ensure_future(get(http, a.proxy_url + "/players/judge", headers={"Origin": "https://a.example"}))
    await asyncio.sleep(0.1)  # a holds the lease
    wants = ["https://b.example", "https://b.example", "https://a.example"]
    rest = [await f for f in [asyncio.ensure_future(get(http, b.proxy_url + "/players/judge", headers={"Origin": o}))
                              for o in wants]]
    got = [await first, *rest]
    assert [(s, msgspec.json.decode(body)["Origin"]) for s, _, body in got] == \
        [(200, o) for o in ["https://a.example", *wants]]
    for o in ("https://a.example", "https://b.example"):
        for proxy in (a, b):
            _, _, body = await get(http, proxy.proxy_url + "/players/judge", headers={"Origin": o})
            assert msgspec.json.decode(body)["Origin"] == o
