"""Requests without a rule pass through unchanged: methods, headers, bodies, status, query bytes, WebSockets."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config.settings import Config
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream


async def test_methods_status_and_bodies_pass_unchanged(make_proxy: ProxyFactory, upstream: Upstream,
                                                        http: aiohttp.ClientSession) -> None:
    upstream.reply("/created", status=201, body=b"made", headers={"X-Thing": "1", "Content-Type": "text/plain"})
    proxy = await make_proxy()
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET"):
        async with http.request(method, proxy.proxy_url + "/created", data=b"payload-" + method.encode()) as r:
            assert r.status == 201
            assert await r.read() == b"made"
            assert r.headers["X-Thing"] == "1"
            assert r.headers["Content-Type"] == "text/plain"
            assert r.headers["Cache-Status"] == (
                "sidecache; fwd=miss; fwd-status=201; detail=status-201" if method == "GET"  # RFC 9111: not storable
                else "sidecache; fwd=bypass; detail=no-rule"
            )
    assert [(s.method, s.body) for s in upstream.seen] == [
        (m, b"payload-" + m.encode()) for m in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET")
    ]


async def test_query_string_is_forwarded_byte_for_byte(make_proxy: ProxyFactory, upstream: Upstream,
                                                       http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy()
    raw = "/q?b=2&a=1&a=%20x&name=Aaron%20Judge&empty=&flag&plus=a+b&pct=%7e"
    async with http.get(aiohttp.client.URL(proxy.proxy_url + raw, encoded=True)) as r:
        assert r.status == 200
    assert upstream.seen[-1].raw_path == raw


async def test_hop_by_hop_headers_stop_and_forwarding_headers_are_added(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/h", headers={"Connection": "X-Secret-Hop", "X-Secret-Hop": "y", "Keep-Alive": "timeout=5",
                                  "X-End": "kept"})
    # The test client is a trusted proxy here, so its X-Forwarded-For is kept and appended to.
    proxy = await make_proxy(config=msgspec.convert({"server": {"trusted_proxies": ["127.0.0.1/32"]}}, Config))
    headers = {"Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "1", "Proxy-Authorization": "Basic x",
               "TE": "trailers", "X-Forwarded-For": "10.0.0.1", "Authorization": "Bearer t", "X-Custom": "v"}
    async with http.get(proxy.proxy_url + "/h", headers=headers) as r:
        assert "X-Secret-Hop" not in r.headers
        assert "Keep-Alive" not in r.headers
        assert r.headers["X-End"] == "kept"
        assert r.headers["Via"] == "1.1 sidecache"
    seen = upstream.seen[-1].headers
    assert "X-Client-Hop" not in seen and "Proxy-Authorization" not in seen and "TE" not in seen
    assert seen["Authorization"] == "Bearer t" and seen["X-Custom"] == "v"
    assert seen["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == proxy.proxy_url.removeprefix("http://")
    assert seen["Via"] == "1.1 sidecache"
    assert "User-Agent" in seen  # the client's own, forwarded; the proxy adds none of its own
    assert seen["User-Agent"].startswith("Python/")


async def test_no_accept_encoding_is_invented(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept")) as bare:
        async with bare.get(proxy.proxy_url + "/plain") as r:
            assert r.status == 200
    seen = upstream.seen[-1].headers
    assert "Accept-Encoding" not in seen and "User-Agent" not in seen and "Accept" not in seen


async def test_compressed_bodies_pass_as_the_origin_encoded_them(make_proxy: ProxyFactory, upstream: Upstream) -> None:
    import gzip

    zipped = gzip.compress(b'{"big": true}')
    upstream.reply("/gz", body=zipped, headers={"Content-Encoding": "gzip"})
    proxy = await make_proxy()
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        async with raw.get(proxy.proxy_url + "/gz", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == zipped


async def test_head_passes_through(make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/doc", body=b"x" * 1234)
    proxy = await make_proxy()
    async with http.head(proxy.proxy_url + "/doc") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "1234"
        assert await r.read() == b""
    assert upstream.seen[-1].method == "HEAD"


async def test_refused_upstream_is_a_502_with_json(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    proxy = await make_proxy(upstream_url="http://127.0.0.1:1")
    async with http.get(proxy.proxy_url + "/anything") as r:
        assert r.status == 502
        raw = await r.read()
        body = msgspec.json.decode(raw)
    assert body["error"] == "upstream_unavailable"
    assert body["status"] == 502
    # The client learns the kind of failure; the backend's address and aiohttp's words are for the log only.
    assert b"127.0.0.1:1" not in raw and b"Connect call failed" not in raw
    assert "cannot reach upstream http://127.0.0.1:1" in caplog.text


async def test_slow_upstream_is_a_504_with_json(make_proxy: ProxyFactory, upstream: Upstream,
                                                http: aiohttp.ClientSession) -> None:
    from proxy.config.settings import Config, UpstreamConfig
    from proxy.config.units import Duration

    upstream.reply("/slow", delay=1.0)
    cfg = Config(upstream=UpstreamConfig(read_timeout=Duration.of("200ms")))
    proxy = await make_proxy(config=cfg)
    async with http.get(proxy.proxy_url + "/slow") as r:
        assert r.status == 504
        body = msgspec.json.decode(await r.read())
    assert body["error"] == "upstream_timeout"
    assert r.headers["Cache-Status"] == "sidecache; fwd=miss; detail=upstream-timeout"


async def test_websocket_upgrade_is_piped_both_ways(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    upstream_closed = asyncio.Event()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        upstream_closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await make_proxy(upstream_url=str(server.make_url("")))
        async with http.ws_connect(proxy.proxy_url + "/ws", protocols=("chat",)) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hello")
            assert (await ws.receive(timeout=2)).data == "echo:hello"
            await ws.send_bytes(b"\x01\x02\x03")
            assert (await ws.receive(timeout=2)).data == b"\x03\x02\x01"
        await asyncio.wait_for(upstream_closed.wait(), 2)  # the client's close reached the upstream
    finally:
        await server.close()


async def test_streamed_body_reaches_the_client_before_upstream_finishes(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def dribble(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first-")
        await release.wait()
        await resp.write(b"second")
        return resp

    app = web.Application()
    app.router.add_get("/stream", dribble)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await make_proxy(upstream_url=str(server.make_url("")))
        async with http.get(proxy.proxy_url + "/stream") as r:
            assert await r.content.readexactly(6) == b"first-"  # arrives while the upstream still holds back
            release.set()
            assert await r.read() == b"second"
    finally:
        await server.close()
