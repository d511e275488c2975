"""sidecache behind a real Sentinel set (a primary, a replica, three sentinels, started once for this module): the
primary is found through the sentinels, found again after a failover, and no request fails meanwhile."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.cache.redis.keyspace import entry_hash
from proxy.config.settings import Config, RedisConfig
from proxy.config.units import Duration
from proxy.errors import ConfigError
from tests.support.client import get, load
from tests.support.factories import ProxyFactory
from tests.support.lanes import fast_lane_only  # noqa: F401 - failovers are slow: one lane here
from tests.support.processes import RedisSentinelSet, RedisServer, redis_command
from tests.support.redis_tier import RULES, cache_key_of
from tests.support.upstream import Upstream
from tests.support.waiting import until


def sentinel_config(s: RedisSentinelSet, **fields: object) -> Config:
    base: dict[str, object] = {"probe_min": Duration.of("50ms"), "probe_max": Duration.of("500ms"),
                               "timeout": Duration.of("250ms"), "url": "redis:///2", "service": s.service}
    return Config(redis=RedisConfig(mode="sentinel", sentinels=s.sentinel_addresses(),
                                    **{**base, **fields}))  # type: ignore[arg-type]


def primary_of(s: RedisSentinelSet) -> RedisServer:
    port = s.current_primary_port()
    return next(x for x in s.data if x.port == port)


async def stored_on(server: RedisServer, name: str) -> bool:
    c = aioredis.from_url(server.url(db=2))
    try:
        return bool(await c.exists(name))
    except Exception:  # noqa: BLE001 - a server mid-failover answers nothing useful yet
        return False
    finally:
        await c.aclose()


async def test_the_primary_is_found_through_the_sentinels(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, redis_sentinel: RedisSentinelSet,
) -> None:
    proxy = await make_proxy(RULES, config=sentinel_config(redis_sentinel))
    tier = proxy.tiers.redis
    assert tier is not None and tier.breaker.closed
    assert (await get(http, proxy.proxy_url + "/players/judge")).cache_status.endswith("stored")
    name = tier.keys.entry(entry_hash(cache_key_of(proxy, "/players/judge")))
    await until(lambda: stored_on(primary_of(redis_sentinel), name))

    async def nodes_seen() -> bool:
        async with http.get(proxy.admin_url + "/readyz") as r:
            redis = (await r.json())["redis"]
        roles = sorted((n["role"], n["up"]) for n in redis["nodes"])
        return redis["mode"] == "sentinel" and roles == [("primary", True)] + [("replica", True)] * 2 + [
            ("sentinel", True)] * 3

    await until(nodes_seen, timeout=5.0)


async def test_sentinels_that_monitor_no_such_service_are_a_start_up_error(
    make_proxy: ProxyFactory, redis_sentinel: RedisSentinelSet,
) -> None:
    with pytest.raises(ConfigError) as err:
        await make_proxy(RULES, config=sentinel_config(redis_sentinel, service="nope"))
    assert err.value.problems == [
        f"redis.service: the sentinels that answered monitor no service named 'nope' (they monitor: "
        f"{redis_sentinel.service}); set `service` to one of those"]


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "SIGKILL"])
async def test_a_failover_mid_load_fails_no_request_and_two_tiers_come_back(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_sentinel: RedisSentinelSet,
    how: str,
) -> None:
    upstream.reply("/players/slow", delay=0.01)
    proxy = await make_proxy(RULES, config=sentinel_config(redis_sentinel))
    tier = proxy.tiers.redis
    assert tier is not None
    old = primary_of(redis_sentinel)
    paths = [f"/players/p{i % 150}?n={i // 150}" for i in range(600)]  # misses throughout: each asks Redis
    running = asyncio.ensure_future(load(http, proxy.proxy_url, paths))
    await asyncio.sleep(0.3)
    if how == "SIGKILL":
        assert old.proc is not None
        old.kill()
    else:
        reply = await asyncio.to_thread(redis_command, redis_sentinel.sentinels[0].port, "SENTINEL", "FAILOVER",
                                        redis_sentinel.service)
        assert reply.strip() == "OK", reply
    statuses = await asyncio.wait_for(running, 60)
    assert statuses == [200] * 600  # not one failed request, whatever the Cache-Status said meanwhile
    await until(lambda: redis_sentinel.current_primary_port() != old.port, timeout=20.0)
    new = primary_of(redis_sentinel)

    async def back_on_two_tiers() -> bool:
        """The breaker closed, and a new answer lands on the new primary."""
        if not tier.breaker.closed:
            return False
        path = f"/teams/t{time.monotonic_ns()}"
        await get(http, proxy.proxy_url + path)
        name = tier.keys.entry(entry_hash(cache_key_of(proxy, path)))
        for _ in range(25):
            if await stored_on(new, name):
                return True
            await asyncio.sleep(0.02)
        return False

    await until(back_on_two_tiers, timeout=20.0)
    # The demoted primary becomes a replica only when the sentinels next look (up to 10 s): the set's second
    # replica, moved over to the new primary at once, is the one the next failover promotes. The killed primary
    # (SIGKILL runs last) stays down; the teardown skips it.
