"""A client's own batch call through the proxy: cached items from the cache, only the missing ones upstream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis

from proxy.config.settings import Config, RedisConfig
from proxy.devtools.sample_data import PropFields, analyse_prop
from tests.support.batching import Backend, post, prop, rule
from tests.support.client import get
from tests.support.delay_proxy import DelayProxy
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.redis_tier import holds, with_redis
from tests.support.waiting import until

TEAM = {"Aaron Judge": "NYY", "Mookie Betts": "LAD", "Mike Trout": "LAA", "Juan Soto": "NYM"}


def item(name: str, n: int, prop_id: str | None = None, **over: Any) -> dict[str, Any]:
    """The batch item for what prop(name, n) asks as a single GET."""
    team = TEAM[name]
    out = {"prop_id": prop_id or f"{name[:3]}-{n}", "player_name": name, "stat_type": ("hits", "runs", "home_runs",
           "rbi")[n % 4], "line": 0.5 + n // 4, "team": team, "matchup": f"{team} vs BOS", **over}
    return {k: v for k, v in out.items() if v is not None}


def analysis(i: dict[str, Any]) -> dict[str, Any]:
    fields = PropFields(i["player_name"], i["stat_type"], float(i["line"]), i["team"], i["matchup"])
    return msgspec.to_builtins(analyse_prop(i["prop_id"], fields))  # type: ignore[no-any-return]



async def test_cached_items_are_answered_here_and_only_the_missing_go_upstream(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    await asyncio.gather(*(get(client, proxy.proxy_url + prop("Aaron Judge", n)) for n in range(3)))
    backend.sample.reset()
    items = [item("Aaron Judge", n, prop_id=f"mine-{n}") for n in range(5)]
    status, headers, reply = await post(client, proxy.proxy_url, {"requests": items, "use_cache": False})
    assert status == 200
    assert backend.sample.calls == {"batch-prop-analysis": 1}
    assert [r["prop_id"] for r in backend.batch_bodies()[0]["requests"]] == ["mine-3", "mine-4"]
    # What is stored per item is fetched with the rule's own body template, never a client's options (issue 11.4)
    assert backend.batch_bodies()[0]["use_cache"] is True
    assert reply["successful"] == [analysis(i) for i in items]
    assert reply["failed"] == []
    perf = reply["performance"]
    assert (perf["total_processed"], perf["successful_count"], perf["failed_count"]) == (5, 5, 0)
    assert perf["cache_hit_rate"] == 0.6
    assert reply["optimization"] == {"batch_size": 5, "cache_enabled": False, "cache_warming": True}
    assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=batch-merged; cached=3; fetched=2"
    _, h, body = await get(client, proxy.proxy_url + prop("Aaron Judge", 4, prop_id="single"))
    assert h["Cache-Status"].startswith("sidecache; hit")  # what the merge fetched was stored per item
    assert msgspec.json.decode(body) == analysis(item("Aaron Judge", 4, prop_id="single"))


async def test_a_batch_of_cached_items_makes_no_upstream_call(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    items = [item("Mookie Betts", n) for n in range(4)]
    await post(client, proxy.proxy_url, {"requests": items})
    backend.sample.reset()
    status, headers, reply = await post(client, proxy.proxy_url, {"requests": items})
    assert (status, backend.sample.calls) == (200, {})
    assert reply["successful"] == [analysis(i) for i in items]
    assert reply["performance"]["cache_hit_rate"] == 1.0
    assert headers["Cache-Status"] == "sidecache; hit; detail=batch-merged; cached=4"
    assert proxy.metrics.requests[("prop-analysis", "hit")] == 1


async def test_failures_keep_the_backends_entries_and_are_not_stored(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.failing_players = {"Mike Trout"}
    backend.sample.group_error_players = {"Juan Soto"}
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    items = [item("Mike Trout", 0, prop_id="t0"), item("Juan Soto", 0), item("Aaron Judge", 0)]
    status, _, reply = await post(client, proxy.proxy_url, {"requests": items})
    assert status == 200
    assert reply["successful"] == [analysis(items[2])]
    assert reply["failed"] == [
        {"prop_id": "t0", "error": "Player data not found for Mike Trout", "type": "player_not_found"},
        {"error": "Player group processing failed for juan soto", "type": "player_group_error"},
    ]
    # The answer, and t0's failure remembered for negative_ttl (issue 11.4); the id-less group error is not.
    assert len(proxy.memory) == 2


async def test_identical_items_go_once_and_an_item_without_an_id_gets_the_backends_default(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    items = [item("Aaron Judge", 1, prop_id="a"), item("Aaron Judge", 1, prop_id="b"), item("Aaron Judge", 1),
             {**item("Aaron Judge", 2), "prop_id": None}]
    del items[2]["prop_id"]
    _, _, reply = await post(client, proxy.proxy_url, {"requests": items})
    assert len(backend.batch_bodies()[0]["requests"]) == 2
    assert [r["prop_id"] for r in reply["successful"]] == ["a", "b", "batch_2", None]
    direct = await post(client, backend.url, {"requests": items})
    assert sorted(map(str, (r["prop_id"] for r in direct[2]["successful"]))) == ["None", "a", "b", "batch_2"]


async def test_many_missing_items_go_in_calls_of_at_most_max_items(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms", max_items=20), upstream_url=backend.url)
    items = [item("Aaron Judge", n) for n in range(45)]
    _, _, reply = await post(client, proxy.proxy_url, {"requests": items})
    assert sorted(len(b["requests"]) for b in backend.batch_bodies()) == [5, 20, 20]
    assert reply["successful"] == [analysis(i) for i in items]


async def test_a_body_of_another_shape_is_relayed_to_the_backend_as_it_is(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    for body in ({"requests": "nope"}, [1, 2], {"requests": [1]}):
        status, headers, reply = await post(client, proxy.proxy_url, body)
        direct_status, _, direct_reply = await post(client, backend.url, body)
        assert (status, reply) == (direct_status, direct_reply)
        assert headers["Cache-Status"] == "sidecache; fwd=bypass; detail=batch-unreadable"


async def test_a_failing_batch_call_is_relayed_as_the_backend_answered(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.fail_batch_status = 500
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    status, headers, reply = await post(client, proxy.proxy_url, {"requests": [item("Aaron Judge", 0)]})
    assert status == 500 and reply == {"error": "Batch processing failed: injected 500", "status_code": 500}
    assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=500; detail=batch-status-500"


async def test_a_rule_at_the_batch_endpoint_turns_merging_off(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    never = '\n[[route]]\nname = "never"\nmatch = "POST /api/v1/optimized/batch-prop-analysis"\nttl = "0s"\n'
    proxy = await make_proxy(rule(window="10ms") + never, upstream_url=backend.url)
    for _ in range(2):
        _, headers, _ = await post(client, proxy.proxy_url, {"requests": [item("Aaron Judge", 0)]})
        assert headers["Cache-Status"] == "sidecache; fwd=bypass; detail=rule-pass"
    assert backend.sample.calls == {"batch-prop-analysis": 2}


async def test_a_cold_batch_of_50_over_a_slow_redis_looks_its_items_up_in_one_round_trip(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession, redis_factory: RedisFactory
) -> None:
    server = redis_factory()
    slow = DelayProxy(server.port, 0.035)  # under the 50 ms call timeout: Redis is slow, never "down"
    await slow.start()
    try:
        config = Config(redis=RedisConfig(url=f"redis://127.0.0.1:{slow.port}/0"))  # the default 50 ms timeout
        proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url, config=config)
        items = [item("Aaron Judge", n, prop_id=f"cold-{n}") for n in range(50)]
        t0 = time.perf_counter()
        status, headers, reply = await post(client, proxy.proxy_url, {"requests": items})
        took = time.perf_counter() - t0
    finally:
        await slow.close()
    assert status == 200 and reply["successful"] == [analysis(i) for i in items]
    assert headers["Cache-Status"].endswith("cached=0; fetched=50")
    assert took < 0.5  # it was 1.9 s: one GET per item, one after the other


async def test_a_batch_reads_another_processes_items_from_redis_and_keeps_them_in_memory(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession, redis_url: str, redis: aioredis.Redis
) -> None:
    a = await make_proxy(rule(window="10ms"), upstream_url=backend.url, config=with_redis(redis_url))
    b = await make_proxy(rule(window="10ms"), upstream_url=backend.url, config=with_redis(redis_url))
    items = [item("Mookie Betts", n) for n in range(6)]
    await post(client, a.proxy_url, {"requests": items[:4]})
    await until(lambda: holds(redis, "sidecache:v1:entry:*", 4))  # a's writes are in the background
    backend.sample.reset()
    status, headers, reply = await post(client, b.proxy_url, {"requests": items})
    assert status == 200 and reply["successful"] == [analysis(i) for i in items]
    assert headers["Cache-Status"].endswith("cached=4; fetched=2")
    assert [len(r["requests"]) for r in backend.batch_bodies()] == [2]
    assert len(b.memory) == 6  # the four read from Redis were promoted, the two fetched were stored
    _, h, _ = await get(client, b.proxy_url + prop("Mookie Betts", 0))
    assert h["Cache-Status"].startswith("sidecache; hit")
