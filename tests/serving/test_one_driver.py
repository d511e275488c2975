"""Seams the one driver closed (issue 10): what worked on ruled routes only now works where the origin's headers
govern too, and every exit is counted and logged the same way."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.telemetry.access_log import AccessLog
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream


async def test_the_origins_stale_while_revalidate_works_without_a_rule(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    upstream.reply("/doc", headers={"Cache-Control": "max-age=10, stale-while-revalidate=60"})
    proxy = await make_proxy(clock=lambda: now[0])
    _, _, first = await get(http, proxy.proxy_url + "/doc")
    now[0] += 20
    _, h, stale = await get(http, proxy.proxy_url + "/doc")
    assert h["Cache-Status"] == "sidecache; fwd=stale; ttl=-10; detail=stale-while-revalidate"
    assert stale == first  # answered at once from the old copy ...
    for _ in range(50):  # ... and refreshed once in the background
        if upstream.hits["/doc"] == 2:
            break
        await asyncio.sleep(0.02)
    _, h, fresh = await get(http, proxy.proxy_url + "/doc")
    assert h["Cache-Status"].startswith("sidecache; hit") and msgspec.json.decode(fresh)["n"] == 2
    assert upstream.hits["/doc"] == 2


async def test_routes_without_a_rule_are_in_the_access_log_and_the_metrics(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(clock=lambda: 1000.0)
    out = io.BytesIO()
    assert proxy.handler is not None
    proxy.handler.access_log = AccessLog(out)
    await get(http, proxy.proxy_url + "/doc")
    await get(http, proxy.proxy_url + "/doc")
    lines = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert [(x["route"], x["cache"]) for x in lines] == [
        ("-", "sidecache; fwd=miss; fwd-status=200; stored"), ("-", "sidecache; hit; ttl=60")]
    assert proxy.metrics.requests[("-", "hit")] == 1 and proxy.metrics.requests[("-", "miss")] == 1


async def test_identical_misses_without_a_rule_make_one_upstream_call(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60"}, delay=0.2)
    proxy = await make_proxy()
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/doc") for _ in range(30)))
    assert {b for _, _, b in got} == {got[0][2]} and all(s == 200 for s, _, _ in got)
    assert upstream.hits["/doc"] == 1


async def test_waiters_on_an_answer_that_cannot_be_stored_ask_for_their_own(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/me", headers={"Cache-Control": "private, max-age=60"}, delay=0.2)
    proxy = await make_proxy()
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/me") for _ in range(5)))
    # the first answer went to its own client only; the others waited for it, then each asked for its own
    assert [msgspec.json.decode(b)["n"] for _, _, b in got].count(1) == 1
    assert upstream.hits["/me"] == 5


async def test_a_refresh_cut_mid_answer_leaves_the_stale_copy_to_answer(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    cut = [False]

    async def doc(request: web.Request) -> web.StreamResponse:
        headers = {"Cache-Control": "max-age=1, stale-if-error=600", "Content-Length": "100"}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        if not cut[0]:
            await resp.write(b"v" * 100)
            await resp.write_eof()
            return resp
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.close()  # the connection goes away mid-answer
        return resp

    app = web.Application()
    app.router.add_get("/doc", doc)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    now = [1000.0]
    try:
        proxy = await make_proxy(upstream_url=str(server.make_url("")).rstrip("/"), clock=lambda: now[0])
        await get(http, proxy.proxy_url + "/doc")
        cut[0], now[0] = True, now[0] + 30
        s, h, body = await get(http, proxy.proxy_url + "/doc")
        assert (s, body) == (200, b"v" * 100) and "detail=stale-if-error" in h["Cache-Status"]
    finally:
        await server.close()
