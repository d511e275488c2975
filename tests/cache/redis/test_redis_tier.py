"""The Redis tier through real proxies and a real redis-server: read-through, promotion, what Redis holds, purges."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import redis.asyncio as aioredis

from proxy.app import Sidecar
from proxy.cache.events import Released, Selector, encode_event
from proxy.policy.entry import decode
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.processes import RedisServer
from tests.support.redis_tier import RULES, cache_key_of, h, holds, with_redis
from tests.support.upstream import Upstream
from tests.support.waiting import until


def key_of(proxy: Sidecar, path_fragment: str) -> str:
    return next(k for k, _ in proxy.memory.items() if path_fragment in k)


async def test_redis_hit_is_promoted_with_its_remaining_ttl(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    now = [1000.0]
    a = await make_proxy(RULES, config=with_redis(redis_url), clock=lambda: now[0])
    b = await make_proxy(RULES, config=with_redis(redis_url), clock=lambda: now[0])
    answer = await get(http, a.proxy_url + "/players/judge")
    status, body = answer.cache_status, answer.body
    assert status == "sidecache; fwd=miss; fwd-status=200; stored"
    key = key_of(a, "judge")
    await until(lambda: redis.exists(f"sidecache:v1:entry:{h(key)}"))
    now[0] += 100
    answer = await get(http, b.proxy_url + "/players/judge")
    status, body_b, headers = answer.cache_status, answer.body, answer.headers
    assert status == "sidecache; hit; ttl=200"  # 300 s minus the 100 s it spent in Redis: never extended
    assert headers["Age"] == "100" and body_b == body
    promoted = b.memory.get(key)
    assert promoted is not None and promoted.stored_at == 1000.0 and promoted.expires_at == 1300.0
    await redis.flushdb()  # the next answer can only come from b's memory now
    status = (await get(http, b.proxy_url + "/players/judge")).cache_status
    assert status == "sidecache; hit; ttl=200"
    assert upstream.hits["/players/judge"] == 1


async def test_redis_holds_namespaced_entries_with_ttl_plus_stale_window_and_tag_sets(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, redis_url: str, redis: aioredis.Redis,
) -> None:
    await redis.set("player_id:judge", b"the backend's own key")  # a neighbour in the same db: never touched
    proxy = await make_proxy(RULES, config=with_redis(redis_url, prefix="sc:test:v1"))
    await get(http, proxy.proxy_url + "/players/judge")
    key = key_of(proxy, "judge")
    entry_key = f"sc:test:v1:entry:{h(key)}"
    await until(lambda: redis.exists(entry_key))
    assert sorted(await redis.keys("*")) == sorted([
        entry_key.encode(), b"sc:test:v1:tag:player:judge", b"sc:test:v1:route:player", b"player_id:judge",
    ])  # and no lease left behind
    ms = (300 + 600) * 1000  # ttl + the longer stale window
    assert ms - 2000 < await redis.pttl(entry_key) <= ms
    assert await redis.smembers("sc:test:v1:tag:player:judge") == {h(key).encode()}
    assert await redis.smembers("sc:test:v1:route:player") == {h(key).encode()}
    assert ms - 2000 < await redis.pttl("sc:test:v1:tag:player:judge") <= ms
    stored = decode(await redis.get(entry_key))
    assert stored == proxy.memory.get(key)
    assert stored is not None and stored.tags == ["player:judge"] and stored.route == "player"
    await proxy.tiers.purge(Selector("all"))
    assert await redis.keys("*") == [b"player_id:judge"]


async def test_purge_by_url_tag_route_and_all_reaches_redis_and_every_memory(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    a = await make_proxy(RULES, config=with_redis(redis_url))
    b = await make_proxy(RULES, config=with_redis(redis_url))
    paths = ["/players/a?x=1", "/players/b", "/teams/nyy", "/teams/lad"]
    for p in paths:
        await get(http, a.proxy_url + p)
    await until(lambda: holds(redis, "sidecache:v1:entry:*", 4))
    for p in paths:
        assert (await get(http, b.proxy_url + p)).cache_status.startswith("sidecache; hit")  # promoted into b's memory
    assert len(b.memory) == 4

    async def purge(body: object) -> object:
        async with http.post(a.admin_url + "/purge", json=body) as r:
            assert r.status == 200
            return await r.json()

    for body, purged, left in (({"url": "/players/a?x=1"}, 1, 3), ({"tag": "player:b"}, 1, 2),
                               ({"route": "team"}, 2, 0)):
        assert await purge(body) == {"purged": purged}
        assert len(a.memory) == left
        assert await holds(redis, "sidecache:v1:entry:*", left)
        await until(lambda left=left: len(b.memory) == left, timeout=0.1)  # events reach b within 100 ms
    assert await redis.exists("sidecache:v1:tag:player:b", "sidecache:v1:route:team") == 0  # purged indexes go too
    for p in paths:
        await get(http, b.proxy_url + p)
    await until(lambda: holds(redis, "sidecache:v1:entry:*", 4))
    assert await purge({"all": True}) == {"purged": 4}  # counted once each, though in Redis and in a's memory
    assert await redis.keys("sidecache:v1:*") == []
    await until(lambda: len(b.memory) == 0, timeout=0.1)
    assert upstream.hits["/players/b"] == 2


async def test_a_lease_whose_holder_died_is_taken_over_when_it_lapses(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    proxy = await make_proxy(RULES, config=with_redis(redis_url))
    await redis.set(f"sidecache:v1:lease:{h(cache_key_of(proxy, '/players/ghost'))}", "a-dead-process", px=300)
    t0 = time.monotonic()
    answer = await get(http, proxy.proxy_url + "/players/ghost")
    status, cache_status = answer.status, answer.cache_status
    took = time.monotonic() - t0
    assert (status, cache_status) == (200, "sidecache; fwd=miss; fwd-status=200; stored")
    assert 0.25 < took < 1.0  # waited for the holder's lease to run out, then fetched itself
    assert upstream.hits["/players/ghost"] == 1


async def test_a_lease_waiter_is_woken_by_the_holders_event_not_by_polling(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
    redis: aioredis.Redis,
) -> None:
    proxy = await make_proxy(RULES, config=with_redis(redis_url))
    await until(lambda: proxy.tiers.redis is not None and proxy.tiers.redis.subscribed)
    key = cache_key_of(proxy, "/players/late")
    await redis.set(f"sidecache:v1:lease:{h(key)}", "another-process", px=5000)
    t0 = time.monotonic()
    pending = asyncio.ensure_future(get(http, proxy.proxy_url + "/players/late"))
    await asyncio.sleep(0.1)
    assert upstream.hits["/players/late"] == 0  # waiting on the other process
    await redis.delete(f"sidecache:v1:lease:{h(key)}")  # it finished without storing anything, and says so:
    await redis.publish("sidecache:v1:events", encode_event(Released("another-process", key)))
    answer = await pending
    status, cache_status = answer.status, answer.cache_status
    assert status == 200 and cache_status.endswith("stored")
    assert time.monotonic() - t0 < 1.0  # not the 5 s lease
    assert upstream.hits["/players/late"] == 1


async def test_unix_socket_url_with_a_db_number(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, redis_server: RedisServer,
) -> None:
    tcp = aioredis.from_url(redis_server.url(db=3))
    try:
        await tcp.flushdb()
        proxy = await make_proxy(RULES, config=with_redis(f"unix://{redis_server.socket}?db=3"))
        await get(http, proxy.proxy_url + "/teams/sea")
        await until(lambda: tcp.exists(f"sidecache:v1:entry:{h(cache_key_of(proxy, '/teams/sea'))}"))
    finally:
        await tcp.flushdb()
        await tcp.aclose()
