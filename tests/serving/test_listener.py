"""The proxy listener against raw sockets: silent, trickling and surplus clients, and request lines as they come."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import msgspec
import pytest
from yarl import URL

from proxy.app import Sidecar
from proxy.config.settings import Config, ListenConfig
from proxy.config.units import Duration
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

BOUND = 5.0  # the longest any read here waits: a safety net against a hang, never the thing under test


def listener(header: str = "10s", keepalive: str = "75s", max_connections: int = 0) -> Config:
    return Config(server=ListenConfig(header_timeout=Duration.of(header), keepalive_timeout=Duration.of(keepalive),
                                      max_connections=max_connections))


async def connect(proxy: Sidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = URL(proxy.proxy_url)
    assert url.host is not None and url.port is not None
    return await asyncio.open_connection(url.host, url.port)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), BOUND)


def json_of(answer: bytes) -> object:
    return msgspec.json.decode(answer.partition(b"\r\n\r\n")[2])


async def test_a_silent_connection_is_closed_after_the_header_timeout(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(config=listener(header="300ms"))
    reader, writer = await connect(proxy)
    assert await until_closed(reader) == b""  # nothing asked, nothing answered: just closed
    writer.close()
    assert proxy.server is not None and proxy.server.header_timeouts == 1


async def test_a_trickling_header_gets_408_and_the_connection_closed(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(config=listener(header="400ms"))
    reader, writer = await connect(proxy)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /players/judge HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)  # one byte at a time: always something arriving, never the end

    task = asyncio.ensure_future(trickle())
    answer = await until_closed(reader)
    task.cancel()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json_of(answer) == {"error": "request_timeout", "status": 408,
                               "message": "the request headers did not arrive within the server's header timeout"}


async def test_an_idle_kept_alive_connection_is_closed_and_a_slow_but_complete_header_is_served(
    make_proxy: ProxyFactory, upstream: Upstream,
) -> None:
    proxy = await make_proxy(config=listener(header="1s", keepalive="300ms"))
    reader, writer = await connect(proxy)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.2)  # headers in two parts, well within the header timeout
    writer.write(b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    assert head.startswith(b"HTTP/1.1 200 OK")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    await reader.readexactly(length)
    assert await until_closed(reader) == b""  # then idle past keepalive_timeout: closed
    writer.close()
    assert upstream.hits["/a"] == 1


async def test_past_the_connection_bound_new_clients_get_503_while_admin_answers(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(config=listener(max_connections=3))
    held = [await connect(proxy) for _ in range(3)]
    for reader, writer in held:  # each is accepted and served
        writer.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)).startswith(b"HTTP/1.1 200")
    reader, writer = await connect(proxy)
    answer = await until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 1\r\n" in answer
    assert json_of(answer)["error"] == "too_many_connections"  # type: ignore[index]
    async with http.get(proxy.admin_url + "/healthz") as r:
        assert r.status == 200
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert "sidecache_client_connections 3.0" in text and "sidecache_client_connections_refused_total 1.0" in text
    held.pop()[1].close()  # one leaves: a newcomer gets in
    for _ in range(100):
        if proxy.server is not None and proxy.server.open < 3:
            break
        await asyncio.sleep(0.02)
    async with http.get(proxy.proxy_url + "/after") as r:
        assert r.status == 200
    for _, w in held:
        w.close()


async def raw(proxy: Sidecar, request: bytes) -> bytes:
    reader, writer = await connect(proxy)
    writer.write(request)
    try:
        return await until_closed(reader)
    finally:
        writer.close()


async def test_an_absolute_form_target_is_served_by_its_path_and_query(
    make_proxy: ProxyFactory, upstream: Upstream,
) -> None:
    proxy = await make_proxy("""
        [[route]]
        name = "player"
        match = "GET /players/{name}"
        ttl = "5m"
    """)
    answer = await raw(proxy, b"GET http://frontend.example:8080/players/judge?x=1 HTTP/1.1\r\nHost: ignored\r\n"
                              b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert upstream.seen[-1].raw_path == "/players/judge?x=1"
    answer = await raw(proxy, b"DELETE http://frontend.example:8080/orders/7 HTTP/1.1\r\nHost: ignored\r\n"
                              b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    seen = upstream.seen[-1]
    assert (seen.method, seen.raw_path) == ("DELETE", "/orders/7")
    assert seen.headers["X-Forwarded-Host"] == "frontend.example:8080"  # the target's authority, not Host (RFC 9112)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_request_lines_of_other_http_versions_get_505(
    make_proxy: ProxyFactory, upstream: Upstream, version: bytes,
) -> None:
    proxy = await make_proxy()
    answer = await raw(proxy, b"GET /v " + version + b"\r\nHost: x\r\n\r\n")
    assert b" 505 " in answer.split(b"\r\n", 1)[0]
    assert json_of(answer) == {"error": "http_version_not_supported", "status": 505,
                               "message": "only HTTP/1.0 and HTTP/1.1 are served here"}
    assert upstream.hits["/v"] == 0


async def test_a_malformed_request_gets_400_json(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    answer = await raw(proxy, b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert json_of(answer)["error"] == "bad_request"  # type: ignore[index]


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    make_proxy: ProxyFactory, upstream: Upstream,
) -> None:
    proxy = await make_proxy()
    reader, writer = await connect(proxy)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                 b"Connection: close\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)  # before any byte of the body
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    answer = await until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert upstream.seen[-1].body == b"hello"
    assert "Expect" not in upstream.seen[-1].headers  # answered here; the upstream would hold the body for its own
