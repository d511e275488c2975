"""Collapsed followers parked in the fast lane (serving/parking.py), through real sockets: one upstream call, the
same bytes a slow-path follower gets, counted like any follower, and nothing personal or out of order."""

from __future__ import annotations

import asyncio
import random
import re

import aiohttp
import msgspec

from proxy.config.settings import Config, UpstreamConfig
from proxy.config.units import Duration
from proxy.serving.parking import Parking
from tests.conftest import ProxyFactory, Upstream
from tests.support.lanes import PLAYER_RULES as RULES
from tests.support.lanes import fast_lane_only  # noqa: F401 - a fixture: parking is the fast lane's own
from tests.support.raw_http import Client, body_of, counter, exchange, fast_hits, header, raw_get, status_of, undated

NOW = 1_000_000.0  # a clock that stands still: two followers' answers differ in nothing but their Date


async def gauge(http: aiohttp.ClientSession, admin: str, name: str) -> float:
    async with http.get(f"{admin}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


async def parked(http: aiohttp.ClientSession, admin: str) -> float:
    """Collapsed followers the fast lane answered so far."""
    return await counter(http, admin, "sidecache_fast_lane_followers")


async def followers(url: str, path: str, n: int, *, split: bool = False) -> tuple[bytes, list[bytes]]:
    """The leader's answer and `n` followers' for `path`: the followers are sent once the leader's fill is in
    flight, whole (the fast lane parks them) or split across two writes (aiohttp's path waits for the fill)."""
    leader = await Client.open(url)
    clients = [await Client.open(url) for _ in range(n)]
    request = raw_get(path)
    try:
        await leader.send(request)
        await asyncio.sleep(0.05)
        await asyncio.gather(*(c.send(*((request[:10], request[10:]) if split else (request,))) for c in clients))
        first, rest = await asyncio.gather(leader.answer(), asyncio.gather(*(c.answer() for c in clients)))
        return first, list(rest)
    finally:
        for c in (leader, *clients):
            c.close()


async def test_followers_parked_on_a_fill_get_a_slow_path_followers_bytes_from_one_upstream_call(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    for path in ("/api/player/1", "/api/player/2"):
        upstream.reply(path, body=b'{"player": 1}', headers={"X-Origin": "yes"}, delay=0.3)
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    before = await parked(http, proxy.admin_url)
    leader, held = await followers(proxy.proxy_url, "/api/player/1", 8)
    assert await parked(http, proxy.admin_url) == before + 8  # every follower answered by the fast lane
    _, waited = await followers(proxy.proxy_url, "/api/player/2", 8, split=True)
    assert await parked(http, proxy.admin_url) == before + 8  # none of these: aiohttp's followers
    assert await fast_hits(http, proxy.admin_url) == 0  # followers are not hits
    assert upstream.hits["/api/player/1"] == 1 and upstream.hits["/api/player/2"] == 1
    assert status_of(leader) == 200 and body_of(leader) == b'{"player": 1}'
    assert "collapsed" not in (header(leader, "Cache-Status") or "")
    for answer in held + waited:
        assert status_of(answer) == 200 and body_of(answer) == b'{"player": 1}'
        assert "collapsed" in (header(answer, "Cache-Status") or "")
    assert {undated(a) for a in held} == {undated(a) for a in waited} and len({undated(a) for a in held}) == 1
    async with http.get(f"{proxy.admin_url}/stats") as resp:
        stats = await resp.json()
    assert stats["routes"]["player"]["requests"] == 18  # the parked followers are counted like any request
    assert stats["fast_lane"]["followers"] == 8



async def test_identical_requests_arriving_at_once_make_one_upstream_call(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """All sent before any is dispatched: the first one's target is announced, the others wait for its dispatch,
    then for its fill, and are answered by the fast lane."""
    upstream.reply("/api/player/3", body=b'{"player": 3}', delay=0.2)
    proxy = await make_proxy(RULES)
    before = await parked(http, proxy.admin_url)
    got = await asyncio.gather(*(exchange(proxy.proxy_url, raw_get("/api/player/3")) for _ in range(30)))
    assert upstream.hits["/api/player/3"] == 1
    assert all(status_of(a) == 200 and body_of(a) == b'{"player": 3}' for a in got)
    assert sum("collapsed" in (header(a, "Cache-Status") or "") for a in got) == 29
    assert await parked(http, proxy.admin_url) > before  # some parked (how many came first is the loop's)


async def test_parked_followers_count_as_coalesced_waiters_and_a_client_leaving_does_not_touch_the_others(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/4", body=b'{"player": 4}', delay=0.5)
    proxy = await make_proxy(RULES)
    before = await parked(http, proxy.admin_url)
    request = raw_get("/api/player/4")
    leader = await Client.open(proxy.proxy_url)
    clients = [await Client.open(proxy.proxy_url) for _ in range(6)]
    try:
        await leader.send(request)
        await asyncio.sleep(0.05)
        for c in clients:
            await c.send(request)
        await asyncio.sleep(0.1)
        assert await gauge(http, proxy.admin_url, "sidecache_coalesced_waiters") == 6
        for c in clients[:3]:  # these leave while parked
            c.close()
        got = await asyncio.gather(leader.answer(), *(c.answer() for c in clients[3:]))
        assert [status_of(a) for a in got] == [200] * 4 and {body_of(a) for a in got} == {b'{"player": 4}'}
        assert await gauge(http, proxy.admin_url, "sidecache_coalesced_waiters") == 0
        assert await parked(http, proxy.admin_url) == before + 3
        again = await exchange(proxy.proxy_url, request)
        assert (header(again, "Cache-Status") or "").startswith("sidecache; hit")
    finally:
        for c in (leader, *clients):
            c.close()
    assert upstream.hits["/api/player/4"] == 1


async def behind_a_parked_request(url: str, path: str, behind: list[bytes], answers: int,
                                  pause: float) -> tuple[bytes, list[bytes]]:
    """A leader's request for `path`; once its fill is in flight, the same request on a second connection (parked),
    then `behind` on that connection, each its own write, `pause` apart: the leader's answer and the follower's
    first `answers` answers."""
    leader, follower = await Client.open(url), await Client.open(url)
    try:
        await leader.send(raw_get(path))
        await asyncio.sleep(0.05)
        await follower.send(raw_get(path))
        await asyncio.sleep(0.02)
        for i, chunk in enumerate(behind):
            if i and pause:
                await asyncio.sleep(pause)
            follower.writer.write(chunk)
        got = [await asyncio.wait_for(follower.answer(), 5) for _ in range(answers)]
        return await leader.answer(), got
    finally:
        leader.close()
        follower.close()


async def test_what_a_client_sends_behind_a_parked_request_is_answered_after_it_in_order(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/5", body=b'{"player": 5}', delay=0.3)
    upstream.reply("/api/player/6", body=b'{"player": 6}')
    upstream.reply("/api/player/7", body=b'{"player": 7}')
    proxy = await make_proxy(RULES)
    await exchange(proxy.proxy_url, raw_get("/api/player/6"))  # a hit from now on
    before, hits = await parked(http, proxy.admin_url), await fast_hits(http, proxy.admin_url)
    # parked, then a hit, a miss and a split request behind it, each in its own write
    behind = [raw_get("/api/player/6"), raw_get("/api/player/7"), raw_get("/api/player/6")[:8],
              raw_get("/api/player/6")[8:]]
    leader, got = await behind_a_parked_request(proxy.proxy_url, "/api/player/5", behind, 4, 0.05)
    assert [body_of(a) for a in got] == [b'{"player": 5}', b'{"player": 6}', b'{"player": 7}', b'{"player": 6}']
    assert status_of(leader) == 200
    assert await parked(http, proxy.admin_url) == before + 1
    assert await fast_hits(http, proxy.admin_url) == hits + 1  # the whole hit behind it; the split one aiohttp's
    assert upstream.hits["/api/player/5"] == 1 and upstream.hits["/api/player/7"] == 1


async def test_a_failed_fill_is_shared_with_parked_followers_as_json_without_another_call(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/8", status=503, body=b"down", delay=0.3)  # an origin error: never stored
    upstream.reply("/api/player/9", body=b"{}", delay=1.0)  # longer than the read timeout: the proxy's own 504
    proxy = await make_proxy(RULES, config=Config(upstream=UpstreamConfig(read_timeout=Duration.of("400ms"))))
    before = await parked(http, proxy.admin_url)
    leader, held = await followers(proxy.proxy_url, "/api/player/8", 5)
    assert [status_of(a) for a in (leader, *held)] == [503] * 6 and {body_of(a) for a in held} == {b"down"}
    assert upstream.hits["/api/player/8"] == 1
    leader, held = await followers(proxy.proxy_url, "/api/player/9", 5)
    for answer in (leader, *held):
        assert status_of(answer) == 504 and header(answer, "Content-Type") == "application/json"
        assert msgspec.json.decode(body_of(answer))["error"] == "upstream_timeout"
    assert upstream.hits["/api/player/9"] == 1
    assert await parked(http, proxy.admin_url) == before + 10  # every follower answered from the fast lane
    assert (await exchange(proxy.proxy_url, raw_get("/api/player/8"))).startswith(b"HTTP/1.1 503")
    assert upstream.hits["/api/player/8"] == 2  # nothing was stored: the next request asks again


async def test_a_personal_answer_never_reaches_a_parked_follower(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """A fill answered with a cookie is the leader's alone: each parked follower is sent upstream on its own,
    passed through as a slow-path follower would be."""
    upstream.reply("/api/player/10", body=b"{}", headers={"Set-Cookie": "session=LEADER"}, delay=0.3)
    proxy = await make_proxy(RULES)
    before = await parked(http, proxy.admin_url)
    leader, held = await followers(proxy.proxy_url, "/api/player/10", 4)
    assert header(leader, "Set-Cookie") == "session=LEADER"
    for answer in held:
        assert status_of(answer) == 200
        assert "uncacheable-" in (header(answer, "Cache-Status") or "") and "fwd=bypass" in answer.decode()
    assert upstream.hits["/api/player/10"] == 5
    assert await parked(http, proxy.admin_url) == before  # parked, then handed to aiohttp, which passed them


async def test_a_client_writing_much_behind_a_parked_request_is_read_in_order_once_it_is_answered(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Past 64 KiB held behind a parked request the connection stops being read (as aiohttp's own queue does);
    nothing is lost: once the parked request is answered, what waited is read and answered in order."""
    upstream.reply("/api/player/11", body=b'{"player": 11}', delay=0.3)
    upstream.reply("/api/player/12", body=b'{"player": 12}')
    proxy = await make_proxy(RULES)
    await exchange(proxy.proxy_url, raw_get("/api/player/12"))
    behind = [raw_get("/api/player/12", f"X-Pad: {'x' * 7000}") for _ in range(20)]  # 140 KB
    leader, got = await behind_a_parked_request(proxy.proxy_url, "/api/player/11", behind, 21, 0)
    assert [body_of(a) for a in got] == [b'{"player": 11}'] + [b'{"player": 12}'] * 20
    assert status_of(leader) == 200
    assert upstream.hits["/api/player/11"] == 1 and upstream.hits["/api/player/12"] == 1


async def test_head_and_http_1_0_followers_get_what_the_slow_path_gives_them(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    for path in ("/api/player/13", "/api/player/14"):
        upstream.reply(path, body=b'{"player": 13}', delay=0.3)
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    asks = [raw_get("/api/player/{}", method="HEAD"),
            raw_get("/api/player/{}", "Connection: keep-alive").replace(b"HTTP/1.1", b"HTTP/1.0")]

    async def round_(path: str, split: bool) -> list[bytes]:
        leader = await Client.open(proxy.proxy_url)
        clients = [await Client.open(proxy.proxy_url) for _ in asks]
        try:
            await leader.send(raw_get(path))
            await asyncio.sleep(0.05)
            for c, ask in zip(clients, asks, strict=True):
                request = ask.replace(b"{}", path.rsplit("/", 1)[1].encode())
                await c.send(*((request[:10], request[10:]) if split else (request,)))
            head = await clients[0].reader.readuntil(b"\r\n\r\n")  # a HEAD's answer has no body to read
            got = [head, await clients[1].answer()]
            await leader.answer()
            return got
        finally:
            for c in (leader, *clients):
                c.close()

    before = await parked(http, proxy.admin_url)
    fast = await round_("/api/player/13", split=False)
    assert await parked(http, proxy.admin_url) == before + 2
    slow = await round_("/api/player/14", split=True)
    assert fast[0].startswith(b"HTTP/1.1 200") and b"Content-Length: 14\r\n" in fast[0]
    assert fast[1].startswith(b"HTTP/1.0 200") and b"Connection: keep-alive\r\n" in fast[1]
    assert [undated(a) for a in fast] == [undated(a) for a in slow]
    assert upstream.hits["/api/player/13"] == 1 and upstream.hits["/api/player/14"] == 1


async def test_an_announcement_never_dispatched_lets_its_waiters_go() -> None:
    """The first request for a target was handed to aiohttp and never reached the handler, and nothing said so:
    the requests waiting on its announcement ask again within a quarter of a second, not never."""
    parking = Parking()
    assert parking.wait("/api/player/15") is None  # announced by the first request
    waiter = parking.wait("/api/player/15")
    assert waiter is not None and not waiter.on.done()
    await asyncio.wait_for(waiter.on, 1.0)
    assert len(parking) == 0
    assert parking.wait("/api/player/15") is None  # announced afresh by the next first request
    parking.dispatched("/api/player/15")
    assert len(parking) == 0


async def test_many_clients_mixing_hits_followers_pipelining_and_leaving_each_get_their_own_answers_in_order(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """40 connections, each sending 15 requests over 12 slow keys in its own random order and rhythm (whole
    writes, split writes, several requests in one write), a few leaving halfway: every answer that is read is
    its own request's, in order, and every key is fetched once."""
    rng = random.Random(7)
    for k in range(12):
        upstream.reply(f"/api/player/{100 + k}", body=b'{"player": %d}' % (100 + k), delay=0.05 + 0.02 * (k % 4))
    proxy = await make_proxy(RULES)

    async def client(n: int) -> None:
        c = await Client.open(proxy.proxy_url)
        try:
            keys = [rng.randrange(12) for _ in range(15)]
            leave = 7 if n % 8 == 0 else None
            i = 0
            while i < len(keys):
                if i == leave:
                    await c.send(raw_get(f"/api/player/{100 + keys[i]}"))
                    return  # closes with its answer unread, the request perhaps parked
                style = rng.choice(("whole", "whole", "split", "pair"))
                batch = keys[i:i + 2] if style == "pair" else keys[i:i + 1]
                data = b"".join(raw_get(f"/api/player/{100 + k}") for k in batch)
                if style == "split":
                    await c.send(data[:7], data[7:])
                else:
                    await c.send(data)
                for k in batch:
                    answer = await asyncio.wait_for(c.answer(), 10)
                    assert status_of(answer) == 200 and body_of(answer) == b'{"player": %d}' % (100 + k)
                i += len(batch)
                await asyncio.sleep(rng.choice((0, 0, 0.001, 0.01)))
        finally:
            c.close()

    await asyncio.gather(*(client(n) for n in range(40)))
    assert all(upstream.hits[f"/api/player/{100 + k}"] == 1 for k in range(12))
    assert await parked(http, proxy.admin_url) > 0  # the fast lane held some of them
    await asyncio.sleep(0.3)  # every fill done: what the leavers left parked is let go
    assert await gauge(http, proxy.admin_url, "sidecache_coalesced_waiters") == 0
