"""Per-player batching end to end: the proxy in front of the sample A1Betting backend, both on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import pytest

from proxy.config.settings import Config, UpstreamConfig
from proxy.config.units import Duration
from tests.support.batching import BATCH, PLAYERS, PROP, Backend, prop, rule
from tests.support.client import get
from tests.support.factories import ProxyFactory


def config(**upstream: Any) -> Config:
    return Config(upstream=UpstreamConfig(**upstream))


async def test_burst_of_120_over_6_players_is_one_batch_per_player_and_each_caller_gets_its_own(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="200ms"), upstream_url=backend.url)
    paths = [prop(name, n) for n in range(20) for name in PLAYERS]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    calls = dict(backend.sample.calls)
    assert calls == {"batch-prop-analysis": 6}  # no single calls at all
    assert sorted(len(b["requests"]) for b in backend.batch_bodies()) == [20] * 6
    for path, (status, headers, body) in zip(paths, results, strict=True):
        direct = await get(client, backend.url + path)
        assert (status, body) == (200, direct[2])  # byte for byte what the single endpoint answers
        assert msgspec.json.decode(body)["prop_id"] == path.split("/")[-1].split("?")[0]
        assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored; detail=batched; batch-size=20"
        assert headers["Content-Type"] == direct[1]["Content-Type"]
    assert proxy.metrics.batches["prop-analysis"] == 6
    assert proxy.metrics.batch_items["prop-analysis"].sum == 120
    assert proxy.metrics.requests[("prop-analysis", "batched")] == 120
    before = sum(backend.sample.calls.values())
    status, headers, body = await get(client, proxy.proxy_url + prop("Aaron Judge", 7, prop_id="another-id"))
    assert headers["Cache-Status"].startswith("sidecache; hit")
    assert msgspec.json.decode(body)["prop_id"] == "another-id"
    assert body == (await get(client, backend.url + prop("Aaron Judge", 7, prop_id="another-id")))[2]
    assert sum(backend.sample.calls.values()) == before + 1  # only the direct comparison call


async def test_identical_props_are_one_item_and_every_caller_keeps_its_id(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(), upstream_url=backend.url)
    paths = [prop("Aaron Judge", 1, prop_id=f"same-{i}") for i in range(10)] + [prop("Aaron Judge", 2)]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 1}
    assert len(backend.batch_bodies()[0]["requests"]) == 2
    assert [msgspec.json.decode(b)["prop_id"] for _, _, b in results[:10]] == [f"same-{i}" for i in range(10)]
    statuses = [h["Cache-Status"] for _, h, _ in results]
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; stored; detail=batched; batch-size=2") == 2
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; collapsed; detail=batched; batch-size=2") == 9


async def test_results_out_of_order_reach_the_right_callers(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    # One batch for everyone with the same matchup: the backend regroups it by player, out of request order.
    proxy = await make_proxy(rule(group="query.matchup"), upstream_url=backend.url)
    paths = [prop(name, n, team="NYY", matchup="NYY vs BOS") for n in range(4) for name in PLAYERS[:3]]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 1}
    sent = [r["prop_id"] for r in backend.batch_bodies()[0]["requests"]]
    assert [r["player_name"] for r in backend.batch_bodies()[0]["requests"]] != sorted(
        r["player_name"] for r in backend.batch_bodies()[0]["requests"])  # interleaved as sent
    async with client.post(backend.url + BATCH, json=backend.batch_bodies()[0]) as r:
        answered = [a["prop_id"] for a in (await r.json())["successful"]]
    assert sorted(answered) == sorted(sent) and answered != sent  # the backend really answers out of order
    for path, (_, _, body) in zip(paths, results, strict=True):
        assert body == (await get(client, backend.url + path))[2]


async def test_failed_item_with_an_id_falls_back_alone_and_gets_the_single_answer(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.failing_players = {"Mike Trout"}
    proxy = await make_proxy(rule(group="query.matchup"), upstream_url=backend.url)
    paths = [prop(name, 1, team="LAA", matchup="LAA vs BOS") for name in ("Aaron Judge", "Mike Trout", "Juan Soto")]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 1, "prop-analysis": 1}
    failed = [r for r in backend.sample.received if r.route == "prop-analysis"]
    assert "Mike+Trout" in failed[0].query_string
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = results
    assert (s2, b2) == (200, b"null")  # exactly what the single endpoint answers for it
    assert h2["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=uncacheable-body"
    assert h1["Cache-Status"].endswith("detail=batched; batch-size=3")  # one failing player never fails others
    assert h3["Cache-Status"].endswith("detail=batched; batch-size=3")
    assert msgspec.json.decode(b1)["player_info"]["name"] == "Aaron Judge"
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "failed")] == 1


async def test_null_answers_are_never_cached(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.failing_players = {"Mike Trout"}
    proxy = await make_proxy(rule(window="10ms", linger="0s"), upstream_url=backend.url)  # a batch of one, failed
    for _ in range(2):
        status, headers, body = await get(client, proxy.proxy_url + prop("Mike Trout", 3))
        assert (status, body) == (200, b"null")
        assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=uncacheable-body"
    assert backend.sample.calls == {"batch-prop-analysis": 2, "prop-analysis": 2}
    assert len(proxy.memory) == 0


async def test_failed_entry_without_an_id_falls_back_for_each_item_of_that_player(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.group_error_players = {"Juan Soto"}  # one failed entry for the group, no prop_id
    proxy = await make_proxy(rule(group="query.matchup"), upstream_url=backend.url)
    paths = [prop(name, n, team="NYM", matchup="NYM vs BOS") for n in range(3) for name in ("Juan Soto", "Aaron Judge")]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 1, "prop-analysis": 3}
    for path, (_, headers, body) in zip(paths, results, strict=True):
        assert body == (await get(client, backend.url + path))[2]
        soto = "Juan+Soto" in path
        assert headers["Cache-Status"].endswith("stored; detail=batch-fallback" if soto else "batch-size=6")
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "missing")] == 3
    _, headers, _ = await get(client, proxy.proxy_url + paths[0])
    assert headers["Cache-Status"].startswith("sidecache; hit")  # a good single answer is stored


async def test_more_than_max_items_makes_two_batches_and_no_single_calls(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="200ms"), upstream_url=backend.url)
    paths = [prop("Aaron Judge", n) for n in range(60)]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 2}
    assert sorted(len(b["requests"]) for b in backend.batch_bodies()) == [10, 50]
    assert {s for s, _, _ in results} == {200}
    assert all(msgspec.json.decode(b)["prop_id"] == p.split("/")[-1].split("?")[0] for p, (_, _, b) in
               zip(paths, results, strict=True))


async def test_items_the_backend_drops_past_50_fall_back_alone(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="200ms", max_items=55), upstream_url=backend.url)
    paths = [prop("Aaron Judge", n) for n in range(55)]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls == {"batch-prop-analysis": 1, "prop-analysis": 5}
    for path, (_, _, body) in zip(paths, results, strict=True):
        assert body == (await get(client, backend.url + path))[2]
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "missing")] == 5


@pytest.mark.parametrize("fault", ["status-500", "status-422", "garbage", "dropped", "timeout"])
async def test_whole_batch_failure_sends_every_item_alone(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession, fault: str
) -> None:
    cfg = None
    if fault.startswith("status-"):
        backend.sample.fail_batch_status = int(fault[-3:])
    elif fault == "garbage":
        backend.sample.batch_garbage = True
    elif fault == "dropped":
        backend.drop_batch = True
    else:
        backend.sample.batch_latency = 1.0
        cfg = config(read_timeout=Duration.of("200ms"))
    proxy = await make_proxy(rule(), upstream_url=backend.url, config=cfg)
    paths = [prop("Aaron Judge", n) for n in range(8)]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert backend.sample.calls["prop-analysis"] == 8
    for path, (status, headers, body) in zip(paths, results, strict=True):
        assert (status, body) == (200, (await get(client, backend.url + path))[2])
        assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored; detail=batch-fallback"
    reason = {"garbage": "batch-unparseable", "dropped": "batch-unreachable", "timeout": "batch-timeout"}
    assert proxy.metrics.batch_fallbacks[("prop-analysis", reason.get(fault, f"batch-{fault}"))] == 8


async def test_whole_batch_and_single_calls_refused_is_a_502_for_everyone(
    make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(), upstream_url="http://127.0.0.1:1")
    results = await asyncio.gather(*(get(client, proxy.proxy_url + prop("Aaron Judge", n)) for n in range(3)))
    assert {s for s, _, _ in results} == {502}
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "batch-unreachable")] == 3


async def test_a_client_that_disconnects_never_cancels_the_batch_for_others(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.batch_latency = 0.2
    # `late` joins the window (wide enough for a busy CI core to get it there in time)
    proxy = await make_proxy(rule(window="150ms", linger="0s"), upstream_url=backend.url)
    leaver = asyncio.ensure_future(get(client, proxy.proxy_url + prop("Aaron Judge", 0)))
    stayers = [asyncio.ensure_future(get(client, proxy.proxy_url + prop("Aaron Judge", n))) for n in range(1, 5)]
    await asyncio.sleep(0.02)
    leaver.cancel()  # in the window
    late = asyncio.ensure_future(get(client, proxy.proxy_url + prop("Aaron Judge", 5)))
    await asyncio.sleep(0.25)
    late.cancel()  # while its batch is with the backend
    results = await asyncio.gather(*stayers)
    assert {s for s, _, _ in results} == {200}
    assert backend.sample.calls == {"batch-prop-analysis": 1}
    assert len(backend.batch_bodies()[0]["requests"]) == 6
    with contextlib.suppress(asyncio.CancelledError):
        await leaver
    _, headers, _ = await get(client, proxy.proxy_url + prop("Aaron Judge", 0))
    assert headers["Cache-Status"].startswith("sidecache; hit")  # the leaver's item was still stored


async def test_batch_calls_in_flight_stay_within_max_batch_calls(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.batch_latency = 0.1
    proxy = await make_proxy(rule(), upstream_url=backend.url, config=config(max_batch_calls=2))
    paths = [prop(name, n) for n in range(3) for name in PLAYERS]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert {s for s, _, _ in results} == {200}
    assert backend.sample.calls == {"batch-prop-analysis": 6}
    assert backend.peak["batch"] == 2


async def test_fallback_calls_in_flight_stay_within_max_fallback_calls(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.fail_batch_status = 500
    backend.sample.latency = 0.05
    proxy = await make_proxy(rule(), upstream_url=backend.url, config=config(max_fallback_calls=3))
    results = await asyncio.gather(*(get(client, proxy.proxy_url + prop("Aaron Judge", n)) for n in range(12)))
    assert {s for s, _, _ in results} == {200}
    assert backend.sample.calls["prop-analysis"] == 12
    assert backend.peak["single"] == 3


async def test_a_request_that_cannot_be_an_item_goes_alone_and_gets_the_backends_answer(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    status, headers, body = await get(client, proxy.proxy_url + prop("Aaron Judge", 1, line="abc"))
    assert status == 422 and b"float_parsing" in body
    status, headers, body = await get(client, proxy.proxy_url + f"{PROP}/x?player_name=Aaron+Judge")
    assert status == 422
    assert backend.sample.calls == {"prop-analysis": 2}
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "unbatchable")] == 2


async def test_batching_counters_are_exported(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="10ms"), upstream_url=backend.url)
    await asyncio.gather(*(get(client, proxy.proxy_url + prop("Aaron Judge", n)) for n in range(3)))
    _, _, text = await get(client, proxy.admin_url + "/metrics")
    assert b'sidecache_batches_total{route="prop-analysis"} 1.0' in text
    assert b'sidecache_batch_items_bucket{le="5.0",route="prop-analysis"} 1.0' in text
    assert b'sidecache_requests_total{outcome="batched",route="prop-analysis"} 3.0' in text


async def test_a_cold_screen_goes_as_one_batch_per_player_without_waiting_its_window(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    # linger (or, for a player whose props came apart, idle) decides, never the 30 s window
    proxy = await make_proxy(rule(window="30s", idle="1s"), upstream_url=backend.url)
    paths = [prop(name, n) for name in PLAYERS for n in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths)), 10)
    for path, (status, _, body) in zip(paths, results, strict=True):
        assert (status, body) == (200, (await get(client, backend.url + path))[2])
    proxied = sum(backend.sample.calls.values()) - len(paths)  # less the direct comparisons
    assert proxied <= 2 * len(PLAYERS)  # at most two calls per player, however the burst arrived
    assert {r["player_name"] for b in backend.batch_bodies() for r in b["requests"]} == set(PLAYERS)


async def test_a_lone_request_goes_to_the_single_endpoint_at_once_and_is_stored(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(rule(window="30s"), upstream_url=backend.url)
    status, headers, body = await asyncio.wait_for(get(client, proxy.proxy_url + prop("Aaron Judge", 1)), 10)
    assert backend.sample.calls == {"prop-analysis": 1}  # no batch of one, no 30 s window
    assert (status, body) == (200, (await get(client, backend.url + prop("Aaron Judge", 1)))[2])
    assert headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored; detail=batch-fallback"
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "alone")] == 1
    _, headers, _ = await get(client, proxy.proxy_url + prop("Aaron Judge", 1, prop_id="other"))
    assert headers["Cache-Status"].startswith("sidecache; hit")


async def test_batches_of_different_players_go_side_by_side_up_to_the_routes_max_calls(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.batch_latency = 0.2
    paths = [prop(name, n) for n in range(3) for name in PLAYERS]
    # linger 20ms: every player's props count as one burst (none spread out), so each batch may use every slot
    proxy = await make_proxy(rule(linger="20ms"), upstream_url=backend.url)  # max_calls 16 by default
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert {s for s, _, _ in results} == {200}
    assert backend.peak["batch"] == len(PLAYERS) == backend.sample.calls["batch-prop-analysis"]
    backend.peak.clear()
    proxy = await make_proxy(rule(linger="20ms", max_calls=2), upstream_url=backend.url)
    paths = [prop(name, n) for n in range(3, 6) for name in PLAYERS]
    results = await asyncio.gather(*(get(client, proxy.proxy_url + p) for p in paths))
    assert {s for s, _, _ in results} == {200}
    assert backend.peak["batch"] == 2


async def _screen(http: aiohttp.ClientSession, proxy_url: str, name: str, ns: range) -> list[tuple[str, int, str]]:
    """Props of one player at once: (path, status, Cache-Status) each, after checking each body against direct."""
    paths = [prop(name, n) for n in ns]
    results = await asyncio.gather(*(get(http, proxy_url + p) for p in paths))
    return [(p, s, h["Cache-Status"]) for p, (s, h, _) in zip(paths, results, strict=True)]


async def _breaker_state(http: aiohttp.ClientSession, admin_url: str) -> tuple[str, int]:
    async with http.get(admin_url + "/stats") as r:
        route = (await r.json())["routes"]["prop-analysis"]
    return route["batch_breaker"], route["batch_breaker_opened"]


async def test_batches_whose_failed_items_succeed_alone_stop_batching_until_a_probe_answers(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.batch_fails_all = True  # the real backend without its own cache: every prop fails in a batch
    proxy = await make_proxy(rule(trip_after=2, cool_down="200ms", max_cool_down="1s"), upstream_url=backend.url)
    for first in (0, 4):  # two bad batches in a row: 4 items failed each, and each then answered alone
        got = await _screen(client, proxy.proxy_url, "Aaron Judge", range(first, first + 4))
        assert {(s, c) for _, s, c in got} == {(200, "sidecache; fwd=miss; fwd-status=200; stored; "
                                                     "detail=batch-fallback")}
    assert backend.sample.calls == {"batch-prop-analysis": 2, "prop-analysis": 8}
    assert await _breaker_state(client, proxy.admin_url) == ("open", 1)
    _, _, text = await get(client, proxy.admin_url + "/metrics")
    assert b'sidecache_batch_breaker_open{route="prop-analysis"} 1.0' in text
    assert b'sidecache_batch_breaker_opened_total{route="prop-analysis"} 1.0' in text

    backend.sample.reset()
    backend.sample.batch_fails_all = True
    got = await _screen(client, proxy.proxy_url, "Mookie Betts", range(4))  # open: as if there were no batching
    assert {s for _, s, _ in got} == {200}
    assert backend.sample.calls == {"prop-analysis": 4}
    assert proxy.metrics.batch_fallbacks[("prop-analysis", "breaker-open")] == 4

    await asyncio.sleep(0.25)  # the cool-down is over: the next request also probes, still failing
    backend.sample.reset()
    backend.sample.batch_fails_all = True
    await _screen(client, proxy.proxy_url, "Juan Soto", range(1))
    await _wait_for(lambda: backend.sample.calls["batch-prop-analysis"] == 1)
    assert backend.sample.calls == {"prop-analysis": 1, "batch-prop-analysis": 1}  # direct + 1
    await _wait_for(lambda: proxy.metrics.batch_probes["prop-analysis"] == 1)
    assert await _breaker_state(client, proxy.admin_url) == ("open", 1)

    await asyncio.sleep(0.45)  # the failed probe doubled the cool-down to 400 ms
    backend.sample.reset()  # the batch path works again
    await _screen(client, proxy.proxy_url, "Shohei Ohtani", range(1))
    await _wait_for(lambda: backend.sample.calls["batch-prop-analysis"] == 1)
    deadline = asyncio.get_running_loop().time() + 5
    while (await _breaker_state(client, proxy.admin_url))[0] != "closed":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    backend.sample.reset()
    got = await _screen(client, proxy.proxy_url, "Freddie Freeman", range(4))
    assert {c for _, _, c in got} == {"sidecache; fwd=miss; fwd-status=200; stored; detail=batched; batch-size=4"}
    assert backend.sample.calls == {"batch-prop-analysis": 1}
    assert proxy.metrics.batch_probes["prop-analysis"] == 2


async def test_whole_batch_failures_open_the_breaker(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.fail_batch_status = 500
    proxy = await make_proxy(rule(trip_after=3), upstream_url=backend.url)
    for first in (0, 2, 4):
        assert {s for _, s, _ in await _screen(client, proxy.proxy_url, "Aaron Judge", range(first, first + 2))} \
            == {200}
    assert await _breaker_state(client, proxy.admin_url) == ("open", 1)
    backend.sample.reset()
    await _screen(client, proxy.proxy_url, "Aaron Judge", range(6, 9))
    assert backend.sample.calls == {"prop-analysis": 3}  # the default 30 s cool-down: no probe yet


async def test_items_that_fail_alone_too_never_open_the_breaker(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.failing_players = {"Mike Trout"}  # unknown upstream: null from the single endpoint as well
    proxy = await make_proxy(rule(trip_after=1), upstream_url=backend.url)
    for first in (0, 3, 6):
        got = await _screen(client, proxy.proxy_url, "Mike Trout", range(first, first + 3))
        assert {c for _, _, c in got} == {"sidecache; fwd=miss; fwd-status=200; detail=uncacheable-body"}
    await asyncio.sleep(0.05)  # the verdicts run once the single calls are in
    assert backend.sample.calls == {"batch-prop-analysis": 3, "prop-analysis": 9}
    assert await _breaker_state(client, proxy.admin_url) == ("closed", 0)


async def test_trip_after_0_keeps_batching_whatever_fails(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    backend.sample.fail_batch_status = 500
    proxy = await make_proxy(rule(trip_after=0), upstream_url=backend.url)
    for first in (0, 2, 4, 6):
        await _screen(client, proxy.proxy_url, "Aaron Judge", range(first, first + 2))
    assert backend.sample.calls == {"batch-prop-analysis": 4, "prop-analysis": 8}
    async with client.get(proxy.admin_url + "/stats") as r:
        assert (await r.json())["routes"]["prop-analysis"]["batch_breaker"] is None


async def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def test_a_first_round_whose_connections_open_together_is_one_batch_though_one_asks_first(
    make_proxy: ProxyFactory, backend: Backend, client: aiohttp.ClientSession
) -> None:
    """A browser opens its 6 connections for a screen's first round; the first asks while the other 5 have sent
    nothing yet. Going alone, it would come back first and keep that connection out of step with the others."""
    proxy = await make_proxy(rule(window="1s", idle="100ms", linger="0.25ms"), upstream_url=backend.url)
    host, port = "127.0.0.1", int(proxy.proxy_url.rsplit(":", 1)[1])
    conns = [await asyncio.open_connection(host, port) for _ in range(6)]
    paths = [prop(PLAYERS[0], n) for n in range(6)]

    async def ask(i: int) -> bytes:
        reader, writer = conns[i]
        if i:
            await asyncio.sleep(0.003)  # many lingers after the first
        writer.write(f"GET {paths[i]} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return head

    try:
        heads = await asyncio.wait_for(asyncio.gather(*(ask(i) for i in range(6))), 10)
    finally:
        for _, writer in conns:
            writer.close()
    assert [h.split(b" ", 2)[1] for h in heads] == [b"200"] * 6
    assert [len(b["requests"]) for b in backend.batch_bodies()] == [6], [h[-200:] for h in heads]
    assert all(b"batch-size=6" in h for h in heads)
