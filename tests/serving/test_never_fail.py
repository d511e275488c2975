"""Requests the backend could answer are answered (issue 12, items 2 and 6): a stale copy stands in for an origin
error within stale-if-error, and the hit path's own memory stays within the byte budget."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config.settings import Config, MemoryConfig
from proxy.config.units import ByteSize
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULE = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
stale_if_error = "10m"
"""



async def test_an_origin_500_within_stale_if_error_is_answered_from_the_stale_copy(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    proxy = await make_proxy(RULE, clock=lambda: now[0])
    _, _, old = await get(http, proxy.proxy_url + "/players/judge")
    now[0] += 400
    for status in (500, 502, 503, 504):
        upstream.reply("/players/judge", status=status, body=b"broken")
        s, h, body = await get(http, proxy.proxy_url + "/players/judge")
        assert (s, body) == (200, old)
        assert h["Cache-Status"] == f"sidecache; fwd=stale; fwd-status={status}; ttl=-100; detail=stale-if-error"
    upstream.reply("/players/judge", status=501, body=b"not implemented")  # not an error RFC 5861 stands in for
    s, _, body = await get(http, proxy.proxy_url + "/players/judge")
    assert (s, body) == (501, b"not implemented")


async def test_a_rule_can_narrow_the_statuses_a_stale_copy_answers_for(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    proxy = await make_proxy(RULE + "stale_on_status = [503]\n", clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/soto")
    now[0] += 400
    upstream.reply("/players/soto", status=500, body=b"the backend's own 500")
    s, _, body = await get(http, proxy.proxy_url + "/players/soto")
    assert (s, body) == (500, b"the backend's own 500")
    upstream.reply("/players/soto", status=503, body=b"overloaded")
    s, h, _ = await get(http, proxy.proxy_url + "/players/soto")
    assert s == 200 and "fwd-status=503" in h["Cache-Status"]


async def test_without_a_rule_the_origins_stale_if_error_covers_its_5xx(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    upstream.reply("/doc", body=b"v1", headers={"Cache-Control": "max-age=10, stale-if-error=600"})
    proxy = await make_proxy(clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/doc")
    now[0] += 60
    upstream.reply("/doc", status=503, body=b"down")
    s, h, body = await get(http, proxy.proxy_url + "/doc")
    assert (s, body) == (200, b"v1") and "fwd-status=503" in h["Cache-Status"]


async def test_many_long_distinct_urls_stay_within_the_byte_budget(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    budget = 256 * 1024
    proxy = await make_proxy(RULE, config=Config(memory=MemoryConfig(max_bytes=ByteSize(budget),
                                                                      max_entries=100_000)))
    for n in range(300):  # 300 x 2 KB targets: the memo and the keys alone are more than the budget
        await get(http, proxy.proxy_url + f"/players/p{n}-" + "x" * 2000)
    memory = proxy.memory
    assert memory.bytes + memory.reserved <= budget
    assert memory.evictions > 0


async def test_an_answer_too_large_to_keep_streams_to_its_client_and_waiters_ask_their_own(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    big = bytes(range(256)) * 12_000  # 3 MB against a 1 MB cap
    upstream.reply("/players/big", body=big, delay=0.2)
    proxy = await make_proxy(RULE, config=Config(memory=MemoryConfig(max_entry_bytes=ByteSize(1024 * 1024))))
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/players/big") for _ in range(3)))
    assert all((s, b) == (200, big) for s, _, b in got)
    statuses = sorted(h["Cache-Status"] for _, h, _ in got)
    assert statuses[-1] == "sidecache; fwd=miss; fwd-status=200; detail=too-large"  # the leader, streamed
    assert all("uncacheable-too-large" in s for s in statuses[:-1])  # the waiters, each on its own
    assert upstream.hits["/players/big"] == 3 and len(proxy.memory) == 0


async def test_a_chunked_answer_past_the_cap_streams_whole(make_proxy: ProxyFactory,
                                                            http: aiohttp.ClientSession) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for n in range(40):
            await resp.write(bytes([n]) * 65536)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/players/{name}", chunked)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await make_proxy(RULE, upstream_url=str(server.make_url("")).rstrip("/"),
                                 config=Config(memory=MemoryConfig(max_entry_bytes=ByteSize(1024 * 1024))))
        s, h, body = await get(http, proxy.proxy_url + "/players/stream")
        assert (s, len(body), body[-1]) == (200, 40 * 65536, 39) and "detail=too-large" in h["Cache-Status"]
    finally:
        await server.close()
