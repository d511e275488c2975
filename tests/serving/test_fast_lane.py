"""The hit fast lane, through real sockets: the same bytes as aiohttp's path (Date aside), counted like any hit, and
everything it does not answer completely left to aiohttp as it came."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxy.config.settings import Config, ListenConfig
from proxy.devtools.loadgen import replay
from tests.conftest import ProxyFactory, Upstream
from tests.support.lanes import PLAYER_RULES as RULES
from tests.support.lanes import fast_lane_only  # noqa: F401 - a fixture: these tests are the fast lane's own
from tests.support.processes import serve
from tests.support.raw_http import exchange, fast_hits, raw_get, undated

NOW = 1_000_000.0  # a clock that stands still: Age and the ttl are the same in both answers


async def test_a_fast_lane_hit_is_byte_for_byte_the_slow_paths_hit(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/7", body=b'{"player": 7}', headers={"ETag": '"v1"', "X-Origin": "yes"})
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    request = raw_get("/api/player/7")
    await exchange(proxy.proxy_url, request)  # the miss fills the entry
    before = await fast_hits(http, proxy.admin_url)
    fast = await exchange(proxy.proxy_url, request)
    assert await fast_hits(http, proxy.admin_url) == before + 1
    slow = await exchange(proxy.proxy_url, request[:10], request[10:])  # split: aiohttp answers it
    assert await fast_hits(http, proxy.admin_url) == before + 1
    assert b"Cache-Status: sidecache; hit" in fast and b'{"player": 7}' in fast
    assert undated(fast) == undated(slow)
    for extra in (('If-None-Match: "v1"',), ("Range: bytes=0-3",)):  # a 304 and a 206, both ways
        request = raw_get("/api/player/7", *extra)
        fast, slow = await exchange(proxy.proxy_url, request), await exchange(proxy.proxy_url, request[:10],
                                                                                request[10:])
        assert fast.split(b" ", 2)[1] in (b"304", b"206")
        assert undated(fast) == undated(slow)
    head = raw_get("/api/player/7", method="HEAD")
    fast = await exchange(proxy.proxy_url, head, head=True)
    slow = await exchange(proxy.proxy_url, head[:10], head[10:], head=True)
    assert undated(fast) == undated(slow) and fast.endswith(b"\r\n\r\n")
    assert upstream.hits["/api/player/7"] == 1


async def test_a_route_without_a_rule_is_answered_by_the_fast_lane_as_by_the_slow_path(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """The origin lane (RFC 9111, the origin's own Cache-Control) has its fresh hits in the fast lane too: same bytes,
    keyed by target and Host as the slow path keys them."""
    upstream.reply("/static/app.js", body=b"var x;", headers={"Cache-Control": "max-age=60", "ETag": '"a"'})
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    request = raw_get("/static/app.js")
    await exchange(proxy.proxy_url, request)  # the miss fills the entry
    before = await fast_hits(http, proxy.admin_url)
    fast = await exchange(proxy.proxy_url, request)
    assert await fast_hits(http, proxy.admin_url) == before + 1
    slow = await exchange(proxy.proxy_url, request[:10], request[10:])
    assert await fast_hits(http, proxy.admin_url) == before + 1
    assert b"Cache-Status: sidecache; hit" in fast and fast.endswith(b"var x;")
    assert undated(fast) == undated(slow)
    other_host = raw_get("/static/app.js").replace(b"Host: ", b"Host: other.")  # another origin's target: its own key
    await exchange(proxy.proxy_url, other_host)
    assert await fast_hits(http, proxy.admin_url) == before + 1
    assert upstream.hits["/static/app.js"] == 2


async def test_a_miss_does_not_pin_the_connection_to_the_slow_path(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    u = URL(proxy.proxy_url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    before = await fast_hits(http, proxy.admin_url)
    try:
        for path in ("/api/player/1", "/api/player/1", "/api/player/2", "/api/player/1", "/api/player/2"):
            writer.write(raw_get(path))
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
            assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert await fast_hits(http, proxy.admin_url) == before + 3  # two misses through aiohttp, three hits here
    assert upstream.hits["/api/player/1"] == 1 and upstream.hits["/api/player/2"] == 1


async def test_a_busy_connection_is_not_pinned_to_the_slow_path(
        tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A slow-path answer (a miss) on a busy connection must not send that connection's next hits to aiohttp: at
    least 90% of hits through the fast lane (issue 17). `sidecache serve` in its own process, on uvloop as deployed,
    and 50 keep-alive connections that each send the next request the moment an answer is read (the bench's
    replay). Waiting for aiohttp's loop to be back at its waiter, not for its answer to be written, gave 34-68%."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    for i in range(40):
        upstream.reply(f"/api/player/{i}", body=b"{}", delay=0.01)
    hits = 3000
    paths = [f"/api/player/{i}" for i in range(40)] + [f"/api/player/{i % 40}" for i in range(hits)]
    with serve("--upstream", upstream.url, "--rules", str(rules)) as proxy:
        await replay("127.0.0.1", int(URL(proxy.proxy_url).port or 0), paths, 50)
        async with http.get(f"{proxy.admin_url}/stats") as resp:
            served_hits = (await resp.json())["routes"]["player"]["hits"]
        fast = await fast_hits(http, proxy.admin_url)
    assert sum(upstream.hits.values()) == 40
    assert served_hits >= hits  # a few of the first 40 may have hit too, collapsed onto another's fill
    assert fast >= 0.9 * served_hits


async def test_fast_lane_hits_are_counted_and_logged_like_any_hit(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    lines: list[tuple[object, ...]] = []
    assert proxy.handler is not None
    proxy.handler.access_log = type("Log", (), {"write": lambda self, *a: lines.append(a)})()
    for _ in range(3):
        await exchange(proxy.proxy_url, raw_get("/api/player/3"))
    async with http.get(f"{proxy.admin_url}/stats") as resp:
        stats = await resp.json()
    assert stats["routes"]["player"]["hits"] == 2
    assert [line[3].split(";")[1].strip() for line in lines] == ["fwd=miss", "hit", "hit"]  # type: ignore[union-attr]
    assert await fast_hits(http, proxy.admin_url) == 2
    # the third was the second's answer written again (serving/replay.py), counted all the same
    assert stats["fast_lane"] == {"hits": 2, "replays": 1, "share_of_hits": 1.0, "followers": 0, "misses": 1}


async def test_what_the_fast_lane_does_not_answer_completely_goes_to_aiohttp(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/9", body=b'{"player": 9}')
    proxy = await make_proxy(RULES)
    url = proxy.proxy_url
    await exchange(url, raw_get("/api/player/9"))
    before = await fast_hits(http, proxy.admin_url)
    # two requests in one chunk (pipelined): both answered, in order, by aiohttp
    both = await exchange(url, raw_get("/api/player/9") + raw_get("/api/player/9"), answers=2)
    assert both.count(b"HTTP/1.1 200 OK") == 2
    # a body, a chunked body, Expect and a close: aiohttp's framing and answer
    body = await exchange(url, raw_get("/api/player/9", "Content-Length: 2")[:-2] + b"\r\nab")
    assert body.startswith(b"HTTP/1.1 200")
    smuggled = await exchange(url, raw_get("/api/player/9", "Content-Length: 3", "Transfer-Encoding: chunked")
                               + b"0\r\n\r\n")
    assert smuggled.split(b" ", 2)[1] == b"400"
    closing = await exchange(url, raw_get("/api/player/9", "Connection: close"))
    assert b"Connection: close" in closing and b'{"player": 9}' in closing
    # someone's credentials: never the shared entry (the rule does not share them)
    old = await exchange(url, raw_get("/api/player/9").replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert old.startswith(b"HTTP/1.0 200") and b"Connection" not in old
    private = await exchange(url, raw_get("/api/player/9", "Authorization: Bearer x"))
    assert b"fwd=bypass" in private or b"fwd=miss" in private
    assert await fast_hits(http, proxy.admin_url) == before


async def test_the_fast_lane_can_be_turned_off(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, config=Config(server=ListenConfig(fast_lane=False)))
    for _ in range(3):
        got = await exchange(proxy.proxy_url, raw_get("/api/player/4"))
    assert b"Cache-Status: sidecache; hit" in got
    assert await fast_hits(http, proxy.admin_url) == -1.0  # no fast lane, no counter
    async with http.get(f"{proxy.admin_url}/stats") as resp:
        assert (await resp.json())["fast_lane"] is None
    assert upstream.hits["/api/player/4"] == 1


async def test_a_large_stored_answer_is_whole_both_ways_and_the_connection_goes_on(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    big = bytes(range(256)) * 1024  # 256 KB: written as the stored bytes after the head, not joined to it
    upstream.reply("/api/player/9", body=big, headers={"Content-Type": "application/octet-stream"})
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    request, small = raw_get("/api/player/9"), raw_get("/api/player/7")
    await exchange(proxy.proxy_url, request)  # the miss fills the entry
    before = await fast_hits(http, proxy.admin_url)
    fast = await exchange(proxy.proxy_url, request, small, answers=2)  # the hit, then the next request
    assert await fast_hits(http, proxy.admin_url) >= before + 1
    slow = await exchange(proxy.proxy_url, request[:10], request[10:])  # split: aiohttp answers it
    for answer in (fast, slow):
        top, _, rest = answer.partition(b"\r\n\r\n")
        assert b"Cache-Status: sidecache; hit" in top and f"Content-Length: {len(big)}".encode() in top
        assert rest[:len(big)] == big
    assert fast[fast.index(b"\r\n\r\n") + 4 + len(big):].startswith(b"HTTP/1.1 200 OK")  # the next answer follows
    head = await exchange(proxy.proxy_url, raw_get("/api/player/9", method="HEAD"), head=True)
    assert f"Content-Length: {len(big)}".encode() in head and head.endswith(b"\r\n\r\n")


# Requests that differ from a plain hit only in what aiohttp's parser refuses besides framing: its limits, a header
# it allows once given twice (two Hosts: two parsers that pick different ones are how caches get poisoned), a
# missing Host. The fast lane must answer each as aiohttp does; `True`: a hit on both paths, `False`: a 400.
_PARSER_CASES = {
    "two Hosts": (["Host: evil.example"], False),
    "two User-Agents": (["User-Agent: a", "User-Agent: b"], False),
    "two ETags, any case": (["ETag: a", "etag: b"], False),
    "two Accepts (allowed)": (["Accept: a", "Accept: b"], True),
    "129 headers": ([f"X-H{i}: v" for i in range(128)], False),
    "128 headers": ([f"X-H{i}: v" for i in range(127)], True),
    "a header value past 8190 bytes": (["X-Long: " + "a" * 9000], False),
    "a header name past 8190 bytes": (["X-" + "a" * 9000 + ": v"], False),
    "a NUL in a value": (["X-Nul: a\x00b"], False),
    "a folded line": (["X-Fold: a", " b"], False),
    "a tab in a value (allowed)": (["X-Tab: a\tb"], True),
}
_RAW_CASES = {
    "HTTP/1.1 without a Host": (b"GET /api/player/1 HTTP/1.1\r\n\r\n", False),
    "HTTP/1.0 without a Host (allowed)": (b"GET /api/player/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    "a target past 8190 bytes": (b"GET /api/player/1?" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", False),
}


@pytest.mark.parametrize("case", [*_PARSER_CASES, *_RAW_CASES])
async def test_what_aiohttp_refuses_the_fast_lane_refuses_too(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, case: str) -> None:
    fast = await make_proxy(RULES)
    slow = await make_proxy(RULES, config=Config(server=ListenConfig(fast_lane=False)))
    if case in _PARSER_CASES:
        extra, hit = _PARSER_CASES[case]
        request = raw_get("/api/player/1", *extra)
    else:
        request, hit = _RAW_CASES[case]
    answers = []
    for proxy in (fast, slow):
        await exchange(proxy.proxy_url, raw_get("/api/player/1"))  # stored: a plain request would be a hit
        answers.append(await exchange(proxy.proxy_url, request))
    statuses = [a.split(b"\r\n", 1)[0].split(b" ")[1] for a in answers]
    assert statuses == ([b"200", b"200"] if hit else [b"400", b"400"])
    assert all((b"Cache-Status: sidecache; hit" in a) == hit for a in answers)
    assert upstream.hits["/api/player/1"] == 2  # one fill per proxy, nothing refused went upstream
