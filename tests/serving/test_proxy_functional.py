"""End to end through a real proxy and a real upstream on loopback: caching, coalescing, sharing, errors."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest

from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

PLAYER = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
tags = ["player:{name}"]
"""



async def test_second_request_is_a_hit_with_age_and_cache_status(make_proxy: ProxyFactory, upstream: Upstream,
                                                                 http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(PLAYER)
    s1, h1, b1 = await get(http, proxy.proxy_url + "/players/judge")
    s2, h2, b2 = await get(http, proxy.proxy_url + "/players/judge")
    assert (s1, s2) == (200, 200)
    assert b1 == b2
    assert upstream.hits["/players/judge"] == 1
    assert h1["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored"
    assert "Age" not in h1
    assert h2["Cache-Status"].startswith("sidecache; hit; ttl=")
    assert h2["Age"] == "0"


async def test_query_order_shares_one_entry(make_proxy: ProxyFactory, upstream: Upstream,
                                            http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(PLAYER)
    await get(http, proxy.proxy_url + "/players/judge?a=1&b=2")
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge?b=2&a=1")
    assert h["Cache-Status"].startswith("sidecache; hit")
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge?b=2&a=3")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    assert upstream.hits["/players/judge"] == 2


async def test_listed_query_params_alone_form_the_key(make_proxy: ProxyFactory, upstream: Upstream,
                                                      http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(PLAYER + 'query = ["season"]\n')
    await get(http, proxy.proxy_url + "/players/judge?season=2025&_=123")
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge?_=456&season=2025")
    assert h["Cache-Status"].startswith("sidecache; hit")
    assert upstream.hits["/players/judge"] == 1


async def test_concurrent_misses_hit_upstream_once(make_proxy: ProxyFactory, upstream: Upstream,
                                                   http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/ohtani", body=b'{"name": "ohtani"}', delay=0.3)
    proxy = await make_proxy(PLAYER)
    results = await asyncio.gather(*(get(http, proxy.proxy_url + "/players/ohtani") for _ in range(100)))
    assert upstream.hits["/players/ohtani"] == 1
    assert {(s, b) for s, _, b in results} == {(200, b'{"name": "ohtani"}')}
    statuses = [h["Cache-Status"] for _, h, _ in results]
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; stored") == 1
    assert statuses.count("sidecache; fwd=miss; fwd-status=200; collapsed") == 99


async def test_upstream_error_reaches_every_waiter_and_is_not_cached(make_proxy: ProxyFactory, upstream: Upstream,
                                                                     http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/x", status=503, body=b'{"error": "down"}', delay=0.2)
    proxy = await make_proxy(PLAYER)
    results = await asyncio.gather(*(get(http, proxy.proxy_url + "/players/x") for _ in range(20)))
    assert upstream.hits["/players/x"] == 1
    assert {(s, b) for s, _, b in results} == {(503, b'{"error": "down"}')}
    upstream.reply("/players/x", body=b'{"ok": true}')
    status, headers, body = await get(http, proxy.proxy_url + "/players/x")
    assert (status, body) == (200, b'{"ok": true}')
    assert upstream.hits["/players/x"] == 2
    assert headers["Cache-Status"].endswith("stored")


async def test_leader_disconnect_does_not_cancel_the_fill(make_proxy: ProxyFactory, upstream: Upstream,
                                                          http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/soto", body=b'{"name": "soto"}', delay=0.4)
    proxy = await make_proxy(PLAYER)
    leader = asyncio.ensure_future(get(http, proxy.proxy_url + "/players/soto"))
    await asyncio.sleep(0.1)
    waiters = [asyncio.ensure_future(get(http, proxy.proxy_url + "/players/soto")) for _ in range(5)]
    await asyncio.sleep(0.1)
    leader.cancel()  # the first client goes away while its request is the one upstream is answering
    results = await asyncio.gather(*waiters)
    assert {(s, b) for s, _, b in results} == {(200, b'{"name": "soto"}')}
    assert upstream.hits["/players/soto"] == 1
    _, h, _ = await get(http, proxy.proxy_url + "/players/soto")
    assert h["Cache-Status"].startswith("sidecache; hit")


async def test_lone_client_disconnect_still_stores(make_proxy: ProxyFactory, upstream: Upstream,
                                                   http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/betts", body=b'{"name": "betts"}', delay=0.3)
    proxy = await make_proxy(PLAYER)
    with contextlib_suppress():
        await asyncio.wait_for(get(http, proxy.proxy_url + "/players/betts"), 0.1)
    await asyncio.sleep(0.4)
    _, h, b = await get(http, proxy.proxy_url + "/players/betts")
    assert b == b'{"name": "betts"}'
    assert h["Cache-Status"].startswith("sidecache; hit")
    assert upstream.hits["/players/betts"] == 1


def contextlib_suppress() -> object:
    import contextlib

    return contextlib.suppress(asyncio.TimeoutError)


async def test_authorization_bypasses_unless_shared_by_rule(make_proxy: ProxyFactory, upstream: Upstream,
                                                           http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(PLAYER + """
[[route]]
name = "shared"
match = "GET /shared/{name}"
ttl = "5m"
share = "all-users"
""")
    auth = {"Authorization": "Bearer abc"}
    for _ in range(2):
        _, h, _ = await get(http, proxy.proxy_url + "/players/judge", headers=auth)
    assert h["Cache-Status"] == "sidecache; fwd=bypass; detail=authorization"
    assert upstream.hits["/players/judge"] == 2
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge", headers={"Cookie": "s=1"})
    assert h["Cache-Status"] == "sidecache; fwd=bypass; detail=cookie"
    for _ in range(2):
        _, h, _ = await get(http, proxy.proxy_url + "/shared/judge", headers=auth)
    assert h["Cache-Status"].startswith("sidecache; hit")
    assert upstream.hits["/shared/judge"] == 1
    assert upstream.seen[-1].headers["Authorization"] == "Bearer abc"  # still forwarded on the fill


async def test_private_responses_are_not_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                                http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", headers={"Set-Cookie": "session=1"})
    upstream.reply("/players/b", headers={"Cache-Control": "private"})
    upstream.reply("/players/c", headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(PLAYER)
    for name, reason in (("a", "set-cookie"), ("b", "private"), ("c", "no-store")):
        for _ in range(2):
            _, h, _ = await get(http, proxy.proxy_url + f"/players/{name}")
            assert h["Cache-Status"] == f"sidecache; fwd=miss; fwd-status=200; detail={reason}"
        assert upstream.hits[f"/players/{name}"] == 2
    assert h.get("Cache-Control") == "no-store"


async def test_collapsed_waiters_never_get_another_clients_cookie(make_proxy: ProxyFactory, upstream: Upstream,
                                                                  http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", headers={"Set-Cookie": "session=leader"}, delay=0.2)
    proxy = await make_proxy(PLAYER)
    results = await asyncio.gather(*(get(http, proxy.proxy_url + "/players/a") for _ in range(5)))
    assert upstream.hits["/players/a"] == 5
    statuses = sorted(h["Cache-Status"] for _, h, _ in results)
    assert statuses.count("sidecache; fwd=bypass; detail=uncacheable-set-cookie") == 4


async def test_shared_rule_stores_without_set_cookie(make_proxy: ProxyFactory, upstream: Upstream,
                                                     http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", headers={"Set-Cookie": "session=first"})
    proxy = await make_proxy(PLAYER + 'share = "all-users"\n')
    _, h1, _ = await get(http, proxy.proxy_url + "/players/a")
    _, h2, _ = await get(http, proxy.proxy_url + "/players/a")
    assert h1["Set-Cookie"] == "session=first"  # the client that asked gets its cookie
    assert h2["Cache-Status"].startswith("sidecache; hit")
    assert "Set-Cookie" not in h2  # nobody else ever does


async def test_5xx_and_unlisted_statuses_are_not_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                                        http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/gone", status=404, body=b'{"error": "nope"}')
    upstream.reply("/players/err", status=500)
    proxy = await make_proxy(PLAYER)
    for _ in range(2):
        s, h, b = await get(http, proxy.proxy_url + "/players/gone")
    assert (s, b) == (404, b'{"error": "nope"}')
    assert h["Cache-Status"] == "sidecache; fwd=miss; fwd-status=404; detail=status-404"
    for _ in range(2):
        await get(http, proxy.proxy_url + "/players/err")
    assert upstream.hits["/players/gone"] == 2
    assert upstream.hits["/players/err"] == 2
    proxy2 = await make_proxy(PLAYER.replace('"player"', '"p2"') + "cache_status = [200, 404]\n")
    for _ in range(2):
        _, h, _ = await get(http, proxy2.proxy_url + "/players/gone")
    assert h["Cache-Status"].startswith("sidecache; hit")


async def test_uncacheable_body_is_not_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                              http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/nobody", body=b"null")
    proxy = await make_proxy(PLAYER + 'uncacheable_bodies = ["null"]\n')
    for _ in range(2):
        s, h, b = await get(http, proxy.proxy_url + "/players/nobody")
    assert (s, b) == (200, b"null")
    assert h["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=uncacheable-body"
    assert upstream.hits["/players/nobody"] == 2


ECHO = """
[[route]]
name = "prop"
match = "GET /props/{prop_id}"
ttl = "5m"
key = ["query.player", "query.line"]
echo = ["prop_id"]
"""


async def test_echo_writes_each_callers_id_into_one_stored_body(make_proxy: ProxyFactory, upstream: Upstream,
                                                                http: aiohttp.ClientSession) -> None:
    upstream.reply("/props/p1", body=b'{"prop_id": "p1", "summary": "over 1.5", "line": 1.5}')
    proxy = await make_proxy(ECHO)
    _, _, b1 = await get(http, proxy.proxy_url + "/props/p1?player=judge&line=1.5")
    _, h2, b2 = await get(http, proxy.proxy_url + "/props/p2?line=1.5&player=judge")
    assert msgspec.json.decode(b1) == {"prop_id": "p1", "summary": "over 1.5", "line": 1.5}
    assert msgspec.json.decode(b2) == {"prop_id": "p2", "summary": "over 1.5", "line": 1.5}
    assert h2["Cache-Status"].startswith("sidecache; hit")
    assert upstream.hits["/props/p1"] == 1 and upstream.hits["/props/p2"] == 0
    await get(http, proxy.proxy_url + "/props/p3?line=2.5&player=judge")
    assert upstream.hits["/props/p3"] == 1


async def test_head_is_served_from_the_get_entry(make_proxy: ProxyFactory, upstream: Upstream,
                                                 http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/judge", body=b'{"name": "judge"}')
    proxy = await make_proxy(PLAYER)
    async with http.head(proxy.proxy_url + "/players/judge") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "17"
        assert await r.read() == b""
    s, h, b = await get(http, proxy.proxy_url + "/players/judge")
    assert b == b'{"name": "judge"}' and h["Cache-Status"].startswith("sidecache; hit")
    assert [x.method for x in upstream.seen] == ["GET"]


async def test_stale_if_error_serves_the_old_copy(make_proxy: ProxyFactory, upstream: Upstream,
                                                  http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    upstream.reply("/players/judge", body=b'{"v": 1}')
    proxy = await make_proxy(PLAYER + 'stale_if_error = "10m"\n', clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/judge")
    now[0] += 301
    upstream.reply("/players/judge", status=502, body=b"bad gateway")
    s, h, b = await get(http, proxy.proxy_url + "/players/judge")
    # The origin's own 502 within stale-if-error is answered from the stale copy, as nginx's proxy_cache_use_stale
    # http_502 does (issue 12.2; before, only transport errors fell back).
    assert (s, b) == (200, b'{"v": 1}')
    assert h["Cache-Status"] == "sidecache; fwd=stale; fwd-status=502; ttl=-1; detail=stale-if-error"
    await proxy.stop()
    proxy2 = await make_proxy(PLAYER + 'stale_if_error = "10m"\n', clock=lambda: now[0],
                              upstream_url="http://127.0.0.1:1")
    proxy2.memory.set(*next(iter(proxy.memory.items())))
    s, h, b = await get(http, proxy2.proxy_url + "/players/judge")
    assert (s, b) == (200, b'{"v": 1}')
    assert h["Cache-Status"] == "sidecache; fwd=stale; fwd-status=502; ttl=-1; detail=stale-if-error"
    assert h["Age"] == "301"


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    upstream.reply("/players/judge", body=b'{"v": 1}')
    proxy = await make_proxy(PLAYER + 'stale_while_revalidate = "30s"\n', clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/judge")
    now[0] += 310
    upstream.reply("/players/judge", body=b'{"v": 2}', delay=0.2)
    results = await asyncio.gather(*(get(http, proxy.proxy_url + "/players/judge") for _ in range(10)))
    assert {b for _, _, b in results} == {b'{"v": 1}'}
    assert all("detail=stale-while-revalidate" in h["Cache-Status"] for _, h, _ in results)
    await asyncio.sleep(0.35)
    assert upstream.hits["/players/judge"] == 2
    _, h, b = await get(http, proxy.proxy_url + "/players/judge")
    assert b == b'{"v": 2}' and h["Cache-Status"].startswith("sidecache; hit")


async def test_expired_entry_is_fetched_again(make_proxy: ProxyFactory, upstream: Upstream,
                                              http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    proxy = await make_proxy(PLAYER, clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/judge")
    now[0] += 299
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge")
    assert h["Cache-Status"] == "sidecache; hit; ttl=1" and h["Age"] == "299"
    now[0] += 2
    _, h, _ = await get(http, proxy.proxy_url + "/players/judge")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    assert upstream.hits["/players/judge"] == 2


async def test_pass_rule_never_stores(make_proxy: ProxyFactory, upstream: Upstream,
                                      http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy("""
[[route]]
name = "never"
match = ["GET /live", "POST /warm"]
ttl = "0s"
""")
    for _ in range(2):
        _, h, _ = await get(http, proxy.proxy_url + "/live")
    async with http.post(proxy.proxy_url + "/warm", data=b"[1]") as r:
        assert r.headers["Cache-Status"] == "sidecache; fwd=bypass; detail=rule-pass"
    assert h["Cache-Status"] == "sidecache; fwd=bypass; detail=rule-pass"
    assert upstream.hits["/live"] == 2 and upstream.hits["/warm"] == 1


async def test_a_repeated_key_field_cannot_poison_the_clean_requests_entry(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(ECHO)
    _, _, poisoned = await get(http, proxy.proxy_url + "/props/1?player=judge&player=mallory&line=1.5")
    s, h, clean = await get(http, proxy.proxy_url + "/props/1?player=judge&line=1.5")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")  # its own entry, not the crafted one
    assert b"mallory" in poisoned and b"mallory" not in clean


async def test_a_body_cut_short_is_an_error_never_an_entry(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        await reader.readuntil(b"\r\n\r\n")
        calls += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
        writer.close()  # 11 of 100 bytes, then gone

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await make_proxy(PLAYER, upstream_url=f"http://127.0.0.1:{port}")
        for _ in range(2):
            status, headers, body = await get(http, proxy.proxy_url + "/players/judge")
            assert status == 502 and b'"error":"upstream_unavailable"' in body  # the detail is the log's
        assert "cut the response body short" in caplog.text
        assert calls == 2  # the first failure stored nothing
        assert len(proxy.memory) == 0
    finally:
        server.close()
        await server.wait_closed()
