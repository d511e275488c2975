"""/stats and /metrics after real traffic: outcomes, expiries, unstored answers, evictions and the advice."""

from __future__ import annotations

import re

import aiohttp
import msgspec

from proxy.config.settings import Config, MemoryConfig
from proxy.config.units import ByteSize
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "game-logs"
match = "GET /logs/{id}"
ttl = "1m"

[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""

# The families /metrics always exports (README "Operating sidecache" lists them, with the batching ones).
FAMILIES = {
    "sidecache_requests": "counter", "sidecache_upstream_requests": "counter", "sidecache_upstream_errors": "counter",
    "sidecache_request_duration_seconds": "histogram", "sidecache_upstream_duration_seconds": "histogram",
    "sidecache_miss_after_expiry_seconds": "histogram", "sidecache_fills_not_stored": "counter",
    "sidecache_config_reloads": "counter", "sidecache_cache_entries": "gauge", "sidecache_cache_bytes": "gauge",
    "sidecache_cache_max_entries": "gauge", "sidecache_cache_max_bytes": "gauge",
    "sidecache_cache_evictions": "counter", "sidecache_inflight_fills": "gauge",
    "sidecache_coalesced_waiters": "gauge", "sidecache_redis_up": "gauge", "sidecache_redis_errors": "counter",
    "sidecache_workers": "gauge",
}


async def stats(http: aiohttp.ClientSession, admin: str) -> dict:  # type: ignore[type-arg]
    async with http.get(admin + "/stats") as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


async def test_misses_just_after_expiry_are_counted_and_advised(make_proxy: ProxyFactory, upstream: Upstream,
                                                                http: aiohttp.ClientSession) -> None:
    now = [1_000_000.0]
    proxy = await make_proxy(RULES, clock=lambda: now[0])
    for i in range(25):
        await get(http, f"{proxy.proxy_url}/logs/{i}")
    now[0] += 63  # every entry is now 3 s past its 1 min TTL
    for i in range(25):
        assert (await get(http, f"{proxy.proxy_url}/logs/{i}")).cache_status.startswith("sidecache; fwd=miss")
    s = await stats(http, proxy.admin_url)
    route = s["routes"]["game-logs"]
    assert (route["misses"], route["expired_misses"], route["expired_within_10s"]) == (50, 25, 25)
    assert {"kind": "ttl", "message": "route game-logs: 50% of misses are expiries within 10 s of TTL; raise ttl or "
            "add stale_while_revalidate"} in s["recommendations"]
    assert s["grade"] == "needs_improvement" and s["hit_ratio"] == 0.0
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'sidecache_miss_after_expiry_seconds_bucket{le="5.0",route="game-logs"} 25.0' in text
    assert 'sidecache_miss_after_expiry_seconds_bucket{le="1.0",route="game-logs"} 0.0' in text


async def test_outcomes_errors_and_unstored_answers(make_proxy: ProxyFactory, upstream: Upstream,
                                                   http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/ghost", status=404, body=b'{"detail": "not found"}')
    proxy = await make_proxy(RULES)
    for path in ("/players/a", "/players/a", "/players/a", "/players/ghost", "/players/ghost"):
        await get(http, proxy.proxy_url + path)
    down = await make_proxy(RULES, upstream_url="http://127.0.0.1:1")
    assert "upstream-unavailable" in (await get(http, down.proxy_url + "/players/a")).cache_status
    s = await stats(http, proxy.admin_url)
    player = s["routes"]["player"]
    assert player["outcomes"] == {"miss": 3, "hit": 2}
    assert player["upstream_status"] == {"200": 1, "404": 2} and player["upstream_calls"] == 3
    assert player["not_stored"] == {"status-404": 2}
    assert (player["hits"], player["hit_ratio"], player["upstream_calls_saved"]) == (2, 0.4, 2)
    assert s["latency"]["p99_ms"] >= s["latency"]["p50_ms"] > 0
    assert [w["requests"] for w in s["workers"]] == [5]
    d = await stats(http, down.admin_url)
    assert d["routes"]["player"]["outcomes"] == {"error": 1}
    assert d["routes"]["player"]["upstream_errors"] == {"UpstreamConnectError": 1}
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'sidecache_fills_not_stored_total{reason="status-404",route="player"} 2.0' in text
    assert 'sidecache_requests_total{outcome="miss",route="player"} 3.0' in text
    assert "sidecache_workers 1.0" in text


async def test_a_tier_that_keeps_evicting_is_advised_to_grow(make_proxy: ProxyFactory, upstream: Upstream,
                                                            http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, config=Config(memory=MemoryConfig(max_entries=5)))
    for i in range(110):
        await get(http, f"{proxy.proxy_url}/players/p{i}")
    s = await stats(http, proxy.admin_url)
    mem = s["tiers"]["memory"]
    assert (mem["entries"], mem["max_entries"], mem["evictions"], mem["evicted_recently"]) == (5, 5, 105, 105)
    [advice] = [r["message"] for r in s["recommendations"] if r["kind"] == "capacity"]
    assert re.fullmatch(r"memory tier evicted 105 entries in \d+ s; raise \[memory\] max_entries "
                        r"\(5 of 5 entries in use\)", advice), advice


async def test_memory_bytes_in_stats_count_keys_and_remembered_targets(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    targets = [f"/players/p{i}-" + "x" * 2000 for i in range(10)]
    bodies = 0
    for target in targets:
        upstream.reply(target, body=b"ok")
        bodies += len((await get(http, proxy.proxy_url + target)).body)
    mem = (await stats(http, proxy.admin_url))["tiers"]["memory"]
    # each target's key holds its 2 KB name, and the hit path's memo the target (twice: key and value) and its key
    assert mem["entries"] == 10 and mem["bytes"] >= bodies + 10 * 4 * 2000, mem


async def test_long_distinct_urls_keep_stats_memory_bytes_within_max_bytes(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    budget = 256 * 1024
    proxy = await make_proxy(RULES, config=Config(memory=MemoryConfig(max_bytes=ByteSize(budget),
                                                                      max_entries=100_000)))
    for i in range(300):  # 300 x 2 KB targets: their keys and memo entries alone are more than the budget
        target = f"/players/p{i}-" + "x" * 2000
        upstream.reply(target, body=b"ok")
        await get(http, proxy.proxy_url + target)
    mem = (await stats(http, proxy.admin_url))["tiers"]["memory"]
    assert budget // 2 <= mem["bytes"] <= mem["max_bytes"] == budget and mem["evictions"] > 0, mem


async def test_metrics_export_every_family(make_proxy: ProxyFactory, upstream: Upstream,
                                           http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    await get(http, proxy.proxy_url + "/players/a")
    async with http.get(proxy.admin_url + "/metrics") as r:
        assert r.content_type == "text/plain"
        text = await r.text()
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert FAMILIES.items() <= {k.removesuffix("_total"): v for k, v in exported.items()}.items()
    assert 'sidecache_cache_max_entries{tier="memory"} 500.0' in text
    assert "sidecache_coalesced_waiters 0.0" in text


async def test_echoed_bodies_count_in_stats_memory_bytes_and_stay_within_max_bytes(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A rule that echoes keeps each caller's body and its gzip copy (serving/echoes.py): counted, and bounded to a
    sixteenth of the budget."""
    budget = 4 * 1024 * 1024
    upstream.reply("/props/p0", body=b'{"prop_id": "p0", "text": "' + b"0123456789" * 400 + b'"}')
    rules = '[[route]]\nname = "prop"\nmatch = "GET /props/{prop_id}"\nttl = "5m"\nkey = []\necho = ["prop_id"]\n'
    proxy = await make_proxy(rules, config=Config(memory=MemoryConfig(max_bytes=ByteSize(budget))))
    await get(http, proxy.proxy_url + "/props/p0")
    alone = (await stats(http, proxy.admin_url))["tiers"]["memory"]["bytes"]
    for i in range(20):
        await get(http, proxy.proxy_url + f"/props/p{i}", headers={"Accept-Encoding": "gzip"})
    kept = (await stats(http, proxy.admin_url))["tiers"]["memory"]["bytes"]
    assert kept >= alone + 19 * 4000, (alone, kept)  # 19 more bodies of 4 KB (p0's own is the stored one)
    for i in range(20, 200):  # more echoed bodies than a sixteenth of the budget holds
        await get(http, proxy.proxy_url + f"/props/p{i}", headers={"Accept-Encoding": "gzip"})
    mem = (await stats(http, proxy.admin_url))["tiers"]["memory"]
    targets = 200 * 1024  # what the hit path remembers of 200 targets, well under 1 KB each
    replays = budget // 32  # the fast lane's kept answers (serving/replay.py), bounded on their own
    assert alone + budget // 32 <= mem["bytes"] <= alone + budget // 16 + targets + replays, mem
    assert mem["entries"] == 1
    assert upstream.hits["/props/p0"] == 1


async def test_a_target_without_a_rule_counts_once_in_memory_bytes_however_often_it_is_asked(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """aiohttp's path dispatches a target no rule matches on every request: its memo is counted once, not each time."""
    upstream.reply("/plain", body=b'{"ok": true}', headers={"Cache-Control": "max-age=60"})
    config = Config()
    config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, fast_lane=False))
    proxy = await make_proxy("", config=config)
    await get(http, proxy.proxy_url + "/plain")
    once = (await stats(http, proxy.admin_url))["tiers"]["memory"]["bytes"]
    for _ in range(20):
        await get(http, proxy.proxy_url + "/plain")
    assert (await stats(http, proxy.admin_url))["tiers"]["memory"]["bytes"] == once
    assert upstream.hits["/plain"] == 1
