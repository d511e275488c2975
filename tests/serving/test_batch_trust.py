"""Batching never changes an answer (issue 11, items 3 and 4): CORS on merged and batched replies, failed items
stay failed, and only what the rule itself asks is stored under the shared single-request key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from proxy.devtools.sample_backend import SampleBackend
from tests.support.batching import post
from tests.support.factories import ProxyFactory

RULE = """
[[route]]
name = "prop-analysis"
match = "GET /mlb/enhanced-prop-analysis/{prop_id}"
ttl = "5m"
negative_ttl = "30s"
key = ["query.player_name", "query.stat_type", "query.line", "query.team", "query.matchup"]
echo = ["prop_id"]
share = "all-users"
uncacheable_bodies = ["null"]
  [route.batch]
  to = "POST /api/v1/optimized/batch-prop-analysis"
  group_by = "query.player_name"
  window = "10ms"
  item.prop_id = "path.prop_id"
  item.player_name = "query.player_name"
  item.stat_type = "query.stat_type"
  item.line = "query.line:float"
  item.team = "query.team"
  item.matchup = "query.matchup"
  body = { requests = "$items", use_cache = true }
"""


@web.middleware
async def fastapi_cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """FastAPI's CORSMiddleware with allow_credentials: the request's Origin reflected, and Vary: Origin."""
    resp = await handler(request)
    if (origin := request.headers.get("Origin")) is not None:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Credentials"] = "true"
    resp.headers["Vary"] = "Origin"
    return resp


@pytest.fixture
async def backend() -> AsyncIterator[tuple[SampleBackend, str]]:
    sample = SampleBackend(latency=0.01)
    app = sample.app()
    app.middlewares.insert(0, fastapi_cors)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield sample, str(server.make_url("")).rstrip("/")
    await server.close()


def item(name: str, n: int, prop_id: str | None = None) -> dict[str, Any]:
    return {"prop_id": prop_id or f"{name[:3]}-{n}", "player_name": name, "stat_type": ("hits", "runs")[n % 2],
            "line": 0.5 + n // 2, "team": "NYY", "matchup": "NYY vs BOS"}


def single(i: dict[str, Any]) -> str:
    q = {k: v for k, v in i.items() if k != "prop_id"}
    return f"/mlb/enhanced-prop-analysis/{i['prop_id']}?{urlencode(q)}"



async def test_a_batch_answered_from_the_cache_carries_this_origins_cors(
    make_proxy: ProxyFactory, backend: tuple[SampleBackend, str], http: aiohttp.ClientSession
) -> None:
    sample, url = backend
    proxy = await make_proxy(RULE, upstream_url=url)
    items = [item("Aaron Judge", n) for n in range(4)]
    app_origin = {"Origin": "https://app.example"}
    status, h, _ = await post(http, proxy.proxy_url, {"requests": items}, headers=app_origin)
    assert (status, h["Access-Control-Allow-Origin"]) == (200, "https://app.example")
    sample.reset()
    status, h, reply = await post(http, proxy.proxy_url, {"requests": items}, headers=app_origin)  # a reload
    assert (status, sample.calls) == (200, {})
    assert h["Access-Control-Allow-Origin"] == "https://app.example" and h["Cache-Status"].startswith("sidecache; hit")
    assert len(reply["successful"]) == 4
    other = {"Origin": "https://other.example"}
    _, h, _ = await post(http, proxy.proxy_url, {"requests": items}, headers=other)  # never another origin's CORS
    assert h["Access-Control-Allow-Origin"] == "https://other.example"
    _, h, _ = await post(http, proxy.proxy_url, {"requests": items})
    assert "Access-Control-Allow-Origin" not in h  # no wildcard invented


async def test_batched_single_requests_of_two_origins_each_get_their_own_cors(
    make_proxy: ProxyFactory, backend: tuple[SampleBackend, str], http: aiohttp.ClientSession
) -> None:
    _, url = backend
    proxy = await make_proxy(RULE, upstream_url=url)
    a, b = {"Origin": "https://a.example"}, {"Origin": "https://b.example"}
    calls = [(item("Aaron Judge", n), a if n % 2 else b) for n in range(6)]

    async def one(i: dict[str, Any], headers: dict[str, str]) -> str:
        async with http.get(proxy.proxy_url + single(i), headers=headers) as r:
            await r.read()
            return r.headers["Access-Control-Allow-Origin"]

    got = await asyncio.gather(*(one(i, h) for i, h in calls))
    assert got == [h["Origin"] for _, h in calls]


async def test_an_item_the_batch_endpoint_fails_is_never_answered_from_a_single_requests_entry(
    make_proxy: ProxyFactory, backend: tuple[SampleBackend, str], http: aiohttp.ClientSession
) -> None:
    sample, url = backend
    proxy = await make_proxy(RULE, upstream_url=url)
    trout = item("Mike Trout", 0, prop_id="t0")
    sample.failing_players = {"Mike Trout"}
    async with http.get(proxy.proxy_url + single(trout)) as r:  # the batch fails it, the single call answers
        assert r.status == 200 and "fwd-status=200" in r.headers["Cache-Status"]
    _, _, reply = await post(http, proxy.proxy_url, {"requests": [trout]})
    assert reply["successful"] == [] and [f["prop_id"] for f in reply["failed"]] == ["t0"]
    sample.reset()
    _, _, again = await post(http, proxy.proxy_url, {"requests": [trout]})  # remembered for negative_ttl
    assert again["failed"] == reply["failed"] and sample.calls == {}


async def test_a_clients_extra_item_fields_and_options_are_not_what_gets_stored(
    make_proxy: ProxyFactory, backend: tuple[SampleBackend, str], http: aiohttp.ClientSession
) -> None:
    sample, url = backend
    proxy = await make_proxy(RULE, upstream_url=url)
    mine = {**item("Aaron Judge", 1), "priority": 3, "extra": "client-only"}
    await post(http, proxy.proxy_url, {"requests": [mine], "use_cache": False, "warm_cache": True})
    sent = msgspec.json.decode(next(r.body for r in sample.received if r.route == "batch-prop-analysis"))
    assert sent == {"requests": [item("Aaron Judge", 1)], "use_cache": True}  # the rule's own item and template
