"""The fills' own HTTP/1.1 client (serving/backend_pool.py) against a backend that writes raw bytes: every way an
answer can be framed arrives whole and is stored once; every way it can go wrong is a 502/504 JSON, never stored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import msgspec
import pytest

from proxy.config.settings import Config, UpstreamConfig
from proxy.config.units import Duration
from tests.support.batching import ITEM_BATCH
from tests.support.factories import ProxyFactory

RULES = """
[[route]]
name = "doc"
match = "GET /docs/{name}"
ttl = "5m"
""" + ITEM_BATCH

BODY = b'{"doc": "' + b"x" * 3000 + b'"}'


def _chunked(body: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700]) for i in range(0, len(body), 700))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + out + b"0\r\n\r\n"


def _plain(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


# What the backend writes for each path, and whether it keeps the connection open after.
SCRIPTS: dict[str, tuple[list[bytes], bool]] = {
    "/docs/chunked": ([_chunked(BODY)], True),
    # no length and not chunked: the body ends where the connection does (RFC 9112 6.3)
    "/docs/eof": ([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n", BODY], False),
    "/docs/early": ([b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", _plain(BODY)], True),
    "/docs/split": ([_plain(BODY)[:20], _plain(BODY)[20:100], _plain(BODY)[100:]], True),
    "/docs/short": ([b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + BODY[:100]], False),
    "/docs/garbage": ([b"SMTP ready\r\n\r\n"], False),
    "/docs/headless": ([], False),
    "/docs/upgrade": ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"], False),
    "/docs/extra": ([_plain(BODY) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG"], True),
    "/docs/stall": ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], True),
}


@dataclass
class ScriptedOrigin:
    """A raw HTTP/1.1 backend: per path, the bytes of its answer, written as they are (keep-alive or closed)."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, connection number)
    connections: int = 0
    port: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self.tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                method, path, _ = head.split("\r\n", 1)[0].split(" ")
                fields = {k.strip().lower(): v.strip() for k, v in
                          (line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                self.seen.append((method, path, number))
                if method == "POST":
                    items = msgspec.json.decode(body)["requests"]
                    reply = msgspec.json.encode({"successful": [{**i, "ok": True} for i in items], "failed": []})
                    pieces, keep = [_chunked(reply)], True
                else:
                    pieces, keep = SCRIPTS[path]
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                if not keep:
                    break
        writer.close()

    def calls(self, path: str) -> int:
        return sum(1 for _, p, _ in self.seen if p == path)


@pytest.fixture
async def origin() -> AsyncIterator[ScriptedOrigin]:
    o = ScriptedOrigin()
    server = await asyncio.start_server(o.handle, "127.0.0.1", 0)
    o.port = server.sockets[0].getsockname()[1]
    yield o
    server.close()
    for task in list(o.tasks):
        task.cancel()
    await asyncio.gather(*o.tasks, return_exceptions=True)
    await server.wait_closed()


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with http.get(url) as r:
        return r.status, await r.read(), r.headers.get("Cache-Status", "")


@pytest.mark.parametrize("path", ["/docs/chunked", "/docs/eof", "/docs/early", "/docs/split"])
async def test_every_framing_of_an_answer_arrives_whole_and_is_stored_once(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin, path: str,
) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{origin.port}")
    first = await _get(http, proxy.proxy_url + path)
    second = await _get(http, proxy.proxy_url + path)
    assert first[:2] == (200, BODY) and "stored" in first[2]
    assert second[:2] == (200, BODY) and second[2].startswith("sidecache; hit")
    assert origin.calls(path) == 1


@pytest.mark.parametrize("path", ["/docs/short", "/docs/garbage", "/docs/headless", "/docs/upgrade"])
async def test_a_broken_answer_is_a_502_json_and_is_never_stored(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin, path: str,
) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{origin.port}")
    for n in (1, 2):
        status, body, _ = await _get(http, proxy.proxy_url + path)
        assert status == 502
        assert msgspec.json.decode(body)["error"] == "upstream_unavailable"
        assert origin.calls(path) >= n  # the failure was not stored: the next request asks again


async def test_an_answer_that_stops_arriving_is_a_504_json_after_read_timeout(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin,
) -> None:
    config = Config(upstream=UpstreamConfig(read_timeout=Duration.of("300ms")))
    proxy = await make_proxy(RULES, config=config, upstream_url=f"http://127.0.0.1:{origin.port}")
    status, body, _ = await _get(http, proxy.proxy_url + "/docs/stall")
    assert status == 504 and msgspec.json.decode(body)["error"] == "upstream_timeout"
    status, _, _ = await _get(http, proxy.proxy_url + "/docs/chunked")  # the pool goes on working
    assert status == 200


async def test_bytes_past_an_answer_are_never_read_as_the_next_ones(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin,
) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{origin.port}")
    assert (await _get(http, proxy.proxy_url + "/docs/extra"))[:2] == (200, BODY)
    status, body, _ = await _get(http, proxy.proxy_url + "/docs/chunked")
    assert (status, body) == (200, BODY)
    chunked = next(n for _, p, n in origin.seen if p == "/docs/chunked")
    extra = next(n for _, p, n in origin.seen if p == "/docs/extra")
    assert chunked != extra  # the connection that carried the stray bytes was not used again


async def test_fills_and_batch_calls_share_kept_connections(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin,
) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{origin.port}")
    for path in ("/docs/chunked", "/items/a", "/docs/early", "/items/b", "/docs/split"):
        status, body, _ = await _get(http, proxy.proxy_url + path)
        assert status == 200, path
    assert msgspec.json.decode((await _get(http, proxy.proxy_url + "/items/b"))[1]) == {"id": "b", "ok": True}
    assert [m for m, _, _ in origin.seen] == ["GET", "POST", "GET", "POST", "GET"]
    assert origin.connections == 1  # one after the other on one kept-alive connection


async def test_many_concurrent_fills_past_the_pool_limit_all_get_their_own_answers(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, origin: ScriptedOrigin,
) -> None:
    config = Config(upstream=UpstreamConfig(max_connections=3))
    proxy = await make_proxy(RULES, config=config, upstream_url=f"http://127.0.0.1:{origin.port}")
    got = await asyncio.gather(*(_get(http, proxy.proxy_url + f"/items/{i}") for i in range(20)))
    assert [msgspec.json.decode(body)["id"] for _, body, _ in got] == [str(i) for i in range(20)]
    assert origin.connections <= 3
