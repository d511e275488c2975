"""Upstream connections: keep-alive against a backend that closes idle ones, one retry for reads, separate pools."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import msgspec
import pytest
from aiohttp import web

from proxy.config.settings import Config, UpstreamConfig
from proxy.config.units import Duration
from tests.support.batching import ITEM_BATCH
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

BATCHED = ITEM_BATCH + """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""


@dataclass
class Received:
    method: str
    path: str
    body: bytes
    answered: bool


@dataclass
class ClosingOrigin:
    """A raw HTTP/1.1 backend that answers one request per connection with keep-alive, then closes the connection,
    unanswered, as soon as the next request arrives on it: a backend closing an idle connection just as the proxy
    sends on it, every time rather than by chance."""

    received: list[Received] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                method, path, _ = head.split("\r\n", 1)[0].split(" ")
                fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
                length = int(next((v for k, v in fields.items() if k.lower() == "content-length"), "0"))
                body = await reader.readexactly(length)
                self.received.append(Received(method, path, body, first))
                if not first:
                    break
                first = False
                payload = self.answer(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(payload), payload))
                await writer.drain()
        writer.close()

    @staticmethod
    def answer(body: bytes) -> bytes:
        if body.startswith(b'{"requests"'):
            items = msgspec.json.decode(body)["requests"]
            return msgspec.json.encode({"successful": [{**i, "ok": True} for i in items], "failed": []})
        return b'{"ok": true}'


@pytest.fixture
async def closing_origin() -> AsyncIterator[ClosingOrigin]:
    origin = ClosingOrigin()
    server = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    yield origin
    server.close()
    await server.wait_closed()


async def send(http: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    async with http.request(method, url, data=body) as r:
        return r.status, await r.read()


async def test_a_request_on_a_connection_the_backend_just_closed_is_sent_again_only_when_it_is_a_read(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, closing_origin: ClosingOrigin,
) -> None:
    proxy = await make_proxy(BATCHED, upstream_url=f"http://127.0.0.1:{closing_origin.port}")
    got = [await send(http, "GET", proxy.proxy_url + "/items/a"),  # a batch call on a new connection
           await send(http, "GET", proxy.proxy_url + "/items/b"),  # a batch call on the kept one: closed under it
           await send(http, "GET", proxy.proxy_url + "/plain"),
           await send(http, "PUT", proxy.proxy_url + "/docs/1", b'{"v": 1}'),
           await send(http, "PUT", proxy.proxy_url + "/docs/1", b'{"v": 2}'),
           await send(http, "DELETE", proxy.proxy_url + "/docs/1")]
    assert [status for status, _ in got] == [200] * 6
    assert msgspec.json.decode(got[1][1]) == {"id": "b", "ok": True}
    batches = [r for r in closing_origin.received if r.path == "/batch"]
    assert [r.answered for r in batches] == [True, False, True]  # the batch POST went out again, once
    assert proxy.upstream is not None and proxy.upstream.retries == 1
    assert [r.body for r in closing_origin.received if r.method == "PUT" and r.answered] == [b'{"v": 1}',
                                                                                            b'{"v": 2}']
    status, body = await send(http, "POST", proxy.proxy_url + "/orders", b'{"buy": 1}')
    assert status == 502 and msgspec.json.decode(body)["error"] == "upstream_unavailable"
    assert [r.body for r in closing_origin.received if r.method == "POST" and r.path == "/orders"] == [b'{"buy": 1}']


async def test_traffic_spaced_around_the_backends_idle_timeout_gets_no_error(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession,
) -> None:
    origin = Upstream()
    runner = web.AppRunner(origin.app(), keepalive_timeout=0.5)  # the backend closes idle connections after 0.5 s
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pauses = itertools.cycle([0.45, 0.5, 0.55, 0.48, 0.52, 0.47, 0.53])
    try:
        proxy = await make_proxy(BATCHED, upstream_url=f"http://127.0.0.1:{port}")
        statuses: list[int] = []

        async def client(c: int) -> None:
            for i in range(5):
                await asyncio.sleep(next(pauses))
                method, path = (("GET", f"/players/p{c}-{i}"), ("PUT", f"/docs/{c}"), ("HEAD", f"/docs/{c}"))[i % 3]
                body = b"{}" if method == "PUT" else None
                statuses.append((await send(http, method, proxy.proxy_url + path, body))[0])

        await asyncio.gather(*(client(c) for c in range(8)))
        assert statuses == [200] * 40
    finally:
        await runner.cleanup()


async def test_idle_pooled_connections_are_dropped_after_keepalive_timeout(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession,
) -> None:
    peers: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)  # aiohttp's own idle timeout: far longer than the proxy's here
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        config = Config(upstream=UpstreamConfig(keepalive_timeout=Duration.of("300ms")))
        proxy = await make_proxy(config=config, upstream_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        for _ in range(3):
            await send(http, "GET", proxy.proxy_url + "/x")  # back to back: one kept connection
        for _ in range(3):
            await asyncio.sleep(0.4)  # idle longer than keepalive_timeout: a new connection each time
            await send(http, "GET", proxy.proxy_url + "/x")
        assert len(set(peers[:3])) == 1
        assert len(set(peers[2:])) == 4
    finally:
        await runner.cleanup()




@dataclass
class Backend:
    """WebSockets that stay open, POSTs that hang until released, and quick JSON GETs."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    gets: int = 0
    waiting: int = 0  # requests held until `release`

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/hang", self.hang)
        app.router.add_get("/slow/{name}", self.slow)
        app.router.add_get("/{tail:.*}", self.get)
        return app

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async def hang(self, request: web.Request) -> web.Response:
        self.waiting += 1
        await self.release.wait()
        return web.json_response({"released": True})

    async def slow(self, request: web.Request) -> web.Response:
        self.waiting += 1
        await self.release.wait()
        return web.json_response({"slow": request.match_info["name"]})

    async def get(self, request: web.Request) -> web.Response:
        self.gets += 1
        return web.json_response({"path": request.path})


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    b = Backend()
    runner = web.AppRunner(b.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield b, f"http://127.0.0.1:{runner.addresses[0][1]}"
    b.release.set()
    await runner.cleanup()


SLOW = """
[[route]]
name = "slow"
match = "GET /slow/{name}"
ttl = "5m"

[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""


async def test_open_websockets_and_hung_posts_never_take_the_connections_fills_need(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, backend: tuple[Backend, str],
) -> None:
    b, url = backend
    config = Config(upstream=UpstreamConfig(max_connections=2, max_passthrough_connections=4,
                                            pool_timeout=Duration.of("5s")))
    proxy = await make_proxy(SLOW, config=config, upstream_url=url)
    sockets = [await http.ws_connect(proxy.proxy_url + "/ws") for _ in range(2)]
    posts = [asyncio.ensure_future(send(http, "POST", proxy.proxy_url + "/hang", b"{}")) for _ in range(2)]
    try:
        await sockets[1].send_str("still there?")
        assert (await sockets[1].receive()).data == "still there?"
        # Every pass-through slot is held; the cold GETs (a ruled fill, an origin-cached GET) get theirs.
        assert await send(http, "GET", proxy.proxy_url + "/players/judge") == (200, b'{"path": "/players/judge"}')
        assert (await send(http, "GET", proxy.proxy_url + "/unruled"))[0] == 200
        assert not any(p.done() for p in posts)
    finally:
        b.release.set()
        for ws in sockets:
            await ws.close()
    assert [(await p)[0] for p in posts] == [200, 200]


async def test_a_request_that_waits_past_pool_timeout_gets_503_with_retry_after(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, backend: tuple[Backend, str],
) -> None:
    b, url = backend
    config = Config(upstream=UpstreamConfig(max_connections=1, max_passthrough_connections=1,
                                            pool_timeout=Duration.of("200ms")))
    proxy = await make_proxy(SLOW, config=config, upstream_url=url)
    holders = [asyncio.ensure_future(send(http, "GET", proxy.proxy_url + "/slow/a")),  # holds the fills' one
               asyncio.ensure_future(send(http, "POST", proxy.proxy_url + "/hang", b"{}"))]  # and the streams' one
    try:
        while b.waiting < 2:
            await asyncio.sleep(0.01)
        for method, path in (("GET", "/players/cold"), ("POST", "/hang")):
            async with http.request(method, proxy.proxy_url + path, data=b"{}") as r:
                assert r.status == 503, path
                assert r.headers["Retry-After"] == "1"
                assert await r.json() == {"error": "upstream_busy", "status": 503,
                                          "message": "every connection to the upstream is in use; try again shortly"}
    finally:
        b.release.set()
    assert [(await h)[0] for h in holders] == [200, 200]
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'sidecache_upstream_pool_timeouts_total{route="player"} 1.0' in text
    assert 'sidecache_upstream_pool_timeouts_total{route="-"} 1.0' in text
