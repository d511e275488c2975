"""Several real `sidecache serve` processes sharing one redis-server behave as one cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from multidict import MultiDict

from proxy.cache.redis.keyspace import entry_hash
from proxy.config.rules import load_rules
from proxy.policy.keys import cache_key
from tests.support.client import get
from tests.support.processes import ServeProcess, serve
from tests.support.redis_tier import RULES, subscribed
from tests.support.upstream import Upstream
from tests.support.waiting import until

FAST = """
[[route]]
name = "fast"
match = "GET /fast/{name}"
ttl = "300ms"
stale_while_revalidate = "30s"
"""


@contextlib.contextmanager
def fleet(n: int, tmp_path: Path, upstream: Upstream, redis_url: str, *extra: str) -> Iterator[list[ServeProcess]]:
    """n separate `sidecache serve` processes (replicas), one rules file, one Redis."""
    rules, config = tmp_path / "rules.toml", tmp_path / "sidecache.toml"
    rules.write_text(RULES + FAST)
    config.write_text('[redis]\ntimeout = "250ms"\n')  # what these tests show must not hang on a busy CI core
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve("--config", str(config), "--rules", str(rules), "--upstream", upstream.url,
                                         "--redis", redis_url, *extra)) for _ in range(n)]



async def test_100_concurrent_cold_requests_over_2_processes_make_one_upstream_call(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
) -> None:
    upstream.reply("/players/ohtani", body=b'{"name": "ohtani"}', delay=0.3)
    with fleet(2, tmp_path, upstream, redis_url) as (a, b):
        await subscribed(http, a, b)
        t0 = time.monotonic()
        results = await asyncio.gather(*(get(http, p.proxy_url + "/players/ohtani") for p in [a, b] * 50))
        took = time.monotonic() - t0
    assert upstream.hits["/players/ohtani"] == 1
    assert {(s, body) for s, _, body in results} == {(200, b'{"name": "ohtani"}')}
    statuses = [r.cache_status for r in results]
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; stored") == 1
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; collapsed") == 99
    assert took < 2.0  # the waiting process was told by pub/sub, long before the 5 s lease ran out


async def test_a_purge_on_one_process_drops_the_memory_copy_in_the_other(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
) -> None:
    with fleet(2, tmp_path, upstream, redis_url) as (a, b):
        await subscribed(http, a, b)
        assert (await get(http, a.proxy_url + "/players/judge")).cache_status.endswith("stored")
        await asyncio.sleep(0.05)  # a's write to Redis is in the background; b then takes it into its memory
        assert (await get(http, b.proxy_url + "/players/judge")).cache_status.startswith("sidecache; hit")
        async with http.post(a.admin_url + "/purge", json={"tag": "player:judge"}) as r:
            assert await r.json() == {"purged": 1}
        await asyncio.sleep(0.1)
        cache_status = (await get(http, b.proxy_url + "/players/judge")).cache_status
    assert cache_status.startswith("sidecache; fwd=miss")  # b's memory copy went within 100 ms
    assert upstream.hits["/players/judge"] == 2


async def test_a_refill_on_one_process_replaces_the_stale_copy_in_the_other(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
) -> None:
    with fleet(2, tmp_path, upstream, redis_url) as (a, b):
        await subscribed(http, a, b)
        first = (await get(http, a.proxy_url + "/fast/x")).body
        await asyncio.sleep(0.05)
        assert (await get(http, b.proxy_url + "/fast/x")).body == first  # b holds v1 in memory
        await asyncio.sleep(0.35)  # both copies are now stale (300 ms ttl, 30 s stale-while-revalidate)
        answer = await get(http, a.proxy_url + "/fast/x")
        cache_status, body = answer.cache_status, answer.body
        assert body == first and "stale-while-revalidate" in cache_status  # a refreshes in the background
        await asyncio.sleep(0.1)
        answer = await get(http, b.proxy_url + "/fast/x")
        cache_status, body = answer.cache_status, answer.body
    assert cache_status.startswith("sidecache; hit") and body != first  # b dropped v1 and read v2 from Redis
    assert upstream.hits["/fast/x"] == 2


async def test_workers_2_starts_serves_and_shares_one_cache(
    tmp_path: Path, upstream: Upstream, redis_url: str, redis: aioredis.Redis,
) -> None:
    with fleet(1, tmp_path, upstream, redis_url, "--workers", "2") as (sup,):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            await subscribed(fresh, sup)
            assert (await get(fresh, sup.proxy_url + "/players/soto")).status == 200
            entry = "sidecache:v1:entry:" + _hash_of(tmp_path / "rules.toml", "/players/soto")
            await until(lambda: redis.exists(entry))
            results = [await get(fresh, sup.proxy_url + "/players/soto") for _ in range(20)]  # new connections
            async with fresh.get(sup.admin_url + "/stats") as r:
                assert r.status == 200
            async with fresh.get(sup.admin_url + "/metrics") as r:
                assert r.status == 200
    assert {r.status for r in results} == {200}
    assert all(r.cache_status.startswith("sidecache; hit") for r in results)  # whichever worker answered
    assert upstream.hits["/players/soto"] == 1


def _hash_of(rules: Path, path: str) -> str:
    matched = load_rules(rules).match("GET", path)
    assert matched is not None
    return entry_hash(cache_key(matched[0], matched[1], MultiDict(), {}))
