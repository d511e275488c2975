"""Stored answers are written in one piece (answer.StoredAnswer): checked on the wire, with raw sockets."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULE = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""


async def exchange(url: str, raw: bytes, *, until_closed: bool) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    try:
        if until_closed:
            return await asyncio.wait_for(reader.read(), 5)
        data = b""
        while data.count(b"HTTP/1.1 ") < raw.count(b"GET ") or not data.endswith(b"}"):
            data += await asyncio.wait_for(reader.read(65536), 5)
        return data
    finally:
        writer.close()


async def test_hits_on_one_keep_alive_connection_are_complete_http(make_proxy: ProxyFactory, upstream: Upstream,
                                                                   http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", body=b'{"name": "a"}', headers={"X-Origin": "yes"})
    proxy = await make_proxy(RULE)
    async with http.get(proxy.proxy_url + "/players/a") as r:
        await r.read()
    one = b"GET /players/a HTTP/1.1\r\nHost: x\r\n\r\n"
    data = await exchange(proxy.proxy_url, one * 3, until_closed=False)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"200 OK"
        assert b"Content-Length: 13" in lines and b"X-Origin: yes" in lines and b"Via: 1.1 sidecache" in lines
        assert any(x.startswith(b"Date: ") for x in lines)
        assert any(x.startswith(b"Cache-Status: sidecache; hit") for x in lines)
        assert body == b'{"name": "a"}'


async def test_connection_close_and_http_1_0_are_honoured(make_proxy: ProxyFactory, upstream: Upstream,
                                                          http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", body=b'{"name": "a"}')
    proxy = await make_proxy(RULE)
    async with http.get(proxy.proxy_url + "/players/a") as r:
        await r.read()
    closing = await exchange(proxy.proxy_url, b"GET /players/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                             until_closed=True)
    assert closing.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in closing
    assert closing.endswith(b'{"name": "a"}')
    old = await exchange(proxy.proxy_url, b"GET /players/a HTTP/1.0\r\n\r\n", until_closed=True)
    assert old.startswith(b"HTTP/1.0 200 OK\r\n") and old.endswith(b'{"name": "a"}')
    head = await exchange(proxy.proxy_url, b"HEAD /players/a HTTP/1.0\r\n\r\n", until_closed=True)
    assert b"Content-Length: 13\r\n" in head and head.endswith(b"\r\n\r\n")
