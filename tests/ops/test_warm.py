"""POST /warm: fills go through the proxy listener (coalescing applies), bounded, and each item is reported."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.ops.warm import result_of
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"

[[route]]
name = "prop"
match = "GET /props/{prop_id}/{rest...}"
ttl = "5m"

[[route]]
name = "never"
match = "GET /live"
ttl = "0s"
"""


async def warm(http: aiohttp.ClientSession, admin: str, body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.post(admin + "/warm", json=body) as r:
        return r.status, await r.json()


async def test_warm_requests_report_stored_fresh_and_failed(make_proxy: ProxyFactory, upstream: Upstream,
                                                           http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/ghost", status=404, body=b"{}")
    proxy = await make_proxy(RULES)
    async with http.get(proxy.proxy_url + "/players/b") as r:
        await r.read()
    status, report = await warm(http, proxy.admin_url, {"requests": [
        {"method": "GET", "path": "/players/a", "query": "season=2024&team=NYY"},
        {"path": "/players/b"},
        {"path": "/players/ghost"},
        {"path": "/unknown"},
        {"path": "/live"},
        {"method": "POST", "path": "/players/a"},
    ]})
    assert status == 200
    assert [(r["path"], r["result"], r.get("reason")) for r in report["results"]] == [
        ("/players/a?season=2024&team=NYY", "stored", None),
        ("/players/b", "fresh", None),
        ("/players/ghost", "failed", "not stored: status-404"),
        ("/unknown", "failed", "no rule caches GET /unknown"),
        ("/live", "failed", 'rule never never stores (ttl = "0s")'),
        ("/players/a", "failed", "only GET answers are cached; warm sends nothing else"),
    ]
    assert (report["stored"], report["fresh"], report["refreshing"], report["failed"]) == (1, 1, 0, 4)
    assert report["results"][0]["cache_status"] == "sidecache; fwd=miss; fwd-status=200; stored"
    assert upstream.hits == {"/players/a": 1, "/players/b": 1, "/players/ghost": 1}  # nothing sent for the rest
    async with http.get(proxy.proxy_url + "/players/a?team=NYY&season=2024") as r:
        assert r.headers["Cache-Status"].startswith("sidecache; hit")


async def test_warm_a_route_from_params(make_proxy: ProxyFactory, upstream: Upstream,
                                        http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    status, report = await warm(http, proxy.admin_url, {"route": "player", "params": [
        {"name": "Aaron Judge", "stat_types": ["hits", "runs"]},
        {"name": "Juan Soto", "line": 1.5},
        {"team": "NYY"},
    ]})
    assert status == 200
    assert [(r["path"], r["result"]) for r in report["results"][:2]] == [
        ("/players/Aaron%20Judge?stat_types=hits&stat_types=runs", "stored"),
        ("/players/Juan%20Soto?line=1.5", "stored"),
    ]
    assert report["results"][2]["reason"] == "missing path parameter(s) name for route player"
    assert [s.raw_path for s in upstream.seen] == [
        "/players/Aaron%20Judge?stat_types=hits&stat_types=runs", "/players/Juan%20Soto?line=1.5"]
    status, report = await warm(http, proxy.admin_url, {"route": "prop", "params": [{"prop_id": "7", "rest": "a/b"}]})
    assert report["results"][0]["path"] == "/props/7/a/b" and report["stored"] == 1
    assert (await warm(http, proxy.admin_url, {"route": "nope", "params": []}))[0] == 404
    status, body = await warm(http, proxy.admin_url, {"route": "player"})
    assert status == 400 and "give either `requests`, or `route` with `params`" in body["message"]
    status, body = await warm(http, proxy.admin_url, {"requests": [], "concurrency": 0})
    assert status == 400 and "$.concurrency" in body["message"]


async def test_identical_warm_items_coalesce_into_one_upstream_call(make_proxy: ProxyFactory, upstream: Upstream,
                                                                   http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", delay=0.2)
    proxy = await make_proxy(RULES)
    status, report = await warm(http, proxy.admin_url, {"requests": [{"path": "/players/a"}] * 8, "concurrency": 8})
    assert status == 200 and report["stored"] == 8
    assert upstream.hits["/players/a"] == 1
    assert sum("collapsed" in r["cache_status"] for r in report["results"]) == 7


async def test_warm_concurrency_is_bounded(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    inflight, peak = 0, 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.05)
        inflight -= 1
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await make_proxy(RULES, upstream_url=str(server.make_url("")).rstrip("/"))
        items = [{"path": f"/players/p{i}"} for i in range(12)]
        status, report = await warm(http, proxy.admin_url, {"requests": items, "concurrency": 3})
    finally:
        await server.close()
    assert status == 200 and report["stored"] == 12
    assert peak == 3


@pytest.mark.parametrize(("cache_status", "result", "reason"), [
    ("sidecache; hit; ttl=42", "fresh", None),
    ("sidecache; fwd=miss; fwd-status=200; stored", "stored", None),
    ("sidecache; fwd=miss; fwd-status=200; collapsed", "stored", None),
    ("sidecache; fwd=miss; fwd-status=200; stored; detail=batched; batch-size=12", "stored", None),
    ("sidecache; fwd=miss; fwd-status=200; stored; detail=redis-unavailable", "stored", None),
    ("sidecache; fwd=miss; fwd-status=200; collapsed; detail=uncacheable-body", "failed",
     "not stored: uncacheable-body"),
    ("sidecache; fwd=miss; fwd-status=404; detail=status-404", "failed", "not stored: status-404"),
    ("sidecache; fwd=miss; detail=upstream-timeout", "failed", "not stored: upstream-timeout"),
    ("sidecache; fwd=stale; ttl=-3; detail=stale-while-revalidate", "refreshing", None),
    ("sidecache; fwd=stale; fwd-status=502; ttl=-40; detail=stale-if-error", "failed",
     "upstream failed (502); an older copy is served meanwhile (stale-if-error)"),
    ("sidecache; fwd=bypass; detail=authorization", "failed", "not cached: authorization"),
    ("", "failed", "unexpected Cache-Status ''"),
])
def test_cache_status_as_a_warm_result(cache_status: str, result: str, reason: str | None) -> None:
    assert result_of(cache_status) == (result, reason)


async def test_warm_paths_cannot_point_the_proxy_elsewhere(make_proxy: ProxyFactory,
                                                           http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy()
    for item in ({"path": "@127.0.0.1:1/x"}, {"path": "//127.0.0.1:1/x"}, {"path": "/x", "headers": {"Host": "a"}},
                 {"path": "/x", "headers": {"X-A": "1\r\nX-Injected: 2"}}, {"path": "/x", "headers": {"X-A\n": "1"}}):
        async with http.post(proxy.admin_url + "/warm", json={"requests": [item]}) as r:
            assert r.status == 400, item
            assert (await r.json())["error"] == "bad_request"
