"""A client gets what the backend would have given that client (issue 11), through real servers on 127.0.0.1:
resource identity in keys, Vary and CORS on ruled routes, no cookie crossing between users, forwarding headers
from this hop, forced refreshes, final purges."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config.settings import Config, MemoryConfig
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream


class Cors:
    """An origin that answers CORS as FastAPI's CORSMiddleware does: it reflects `Origin`, allows credentials and
    says `Vary: Origin`; it also honours `Accept` (CSV or JSON, with `Vary: Accept` on that path)."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.delay = 0.0
        self.cache_control = ""  # sent when set (routes without a rule need the origin's own freshness)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Vary": "Origin"}
        if self.cache_control:  # with a validator of its own per Origin, so a stale copy is revalidated
            headers |= {"Cache-Control": self.cache_control, "ETag": f'"{request.headers.get("Origin", "")}"'}
        if (origin := request.headers.get("Origin")) is not None:
            headers |= {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
        if request.path == "/report":
            headers["Vary"] = "Origin, Accept"
            if request.headers.get("Accept") == "text/csv":
                return web.Response(body=b"a,b\n1,2\n", content_type="text/csv", headers=headers)
        return web.json_response({"path": request.path, "n": self.hits[request.path]}, headers=headers)


@pytest.fixture
async def cors() -> AsyncIterator[tuple[Cors, str]]:
    origin = Cors()
    server = TestServer(origin.app(), host="127.0.0.1")
    await server.start_server()
    yield origin, str(server.make_url("")).rstrip("/")
    await server.close()


SHARED = """
[[route]]
name = "live"
match = ["GET /a/stats", "GET /a/metrics"]
ttl = "1m"
share = "all-users"

[[route]]
name = "files"
match = "GET /f/{rest...}"
ttl = "1m"

[[route]]
name = "data"
match = "GET /d/{name}"
ttl = "1m"
share = "all-users"
refresh_when = ["query.force_refresh=true"]

[[route]]
name = "report"
match = "GET /report"
ttl = "1m"
share = "all-users"
"""


# --- 11.1 keys identify the resource ------------------------------------------------------------------------


async def test_two_patterns_of_one_rule_never_share_an_entry(make_proxy: ProxyFactory, upstream: Upstream,
                                                            http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(SHARED)
    _, _, stats = await get(http, proxy.proxy_url + "/a/stats")
    _, _, metrics = await get(http, proxy.proxy_url + "/a/metrics")
    assert msgspec.json.decode(stats)["path"] == "/a/stats"
    assert msgspec.json.decode(metrics)["path"] == "/a/metrics"
    _, h, again = await get(http, proxy.proxy_url + "/a/stats")
    assert h["Cache-Status"].startswith("sidecache; hit") and again == stats
    assert (upstream.hits["/a/stats"], upstream.hits["/a/metrics"]) == (1, 1)


async def test_an_encoded_slash_is_another_resource_than_a_slash(make_proxy: ProxyFactory, upstream: Upstream,
                                                                http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(SHARED)
    _, _, plain = await get(http, proxy.proxy_url + "/f/a/b")
    async with http.get(aiohttp.client.URL(proxy.proxy_url + "/f/a%2Fb", encoded=True)) as r:
        encoded = await r.read()
    assert msgspec.json.decode(plain)["raw_path"] == "/f/a/b"
    assert msgspec.json.decode(encoded)["raw_path"] == "/f/a%2Fb"
    assert [s.raw_path for s in upstream.seen] == ["/f/a/b", "/f/a%2Fb"]


# --- 11.2 the origin's Vary on ruled routes -----------------------------------------------------------------


async def test_each_browser_origin_gets_its_own_cors_headers_from_a_ruled_route(
    make_proxy: ProxyFactory, cors: tuple[Cors, str], http: aiohttp.ClientSession
) -> None:
    origin, url = cors
    proxy = await make_proxy(SHARED, upstream_url=url)
    _, evil, _ = await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": "https://evil.example"})
    assert evil["Access-Control-Allow-Origin"] == "https://evil.example"
    for _ in range(2):
        _, good, _ = await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": "https://app.example"})
        assert good["Access-Control-Allow-Origin"] == "https://app.example"
    _, none, _ = await get(http, proxy.proxy_url + "/a/stats")  # as a warm fill asks: no Origin
    assert "Access-Control-Allow-Origin" not in none
    _, good, _ = await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": "https://app.example"})
    assert good["Access-Control-Allow-Origin"] == "https://app.example"  # the warm fill stripped nothing
    assert good["Cache-Status"].startswith("sidecache; hit")
    assert origin.hits["/a/stats"] == 3  # one fill per Origin: evil, app, none


async def test_vary_accept_never_serves_csv_to_a_json_client(make_proxy: ProxyFactory, cors: tuple[Cors, str],
                                                            http: aiohttp.ClientSession) -> None:
    _, url = cors
    proxy = await make_proxy(SHARED, upstream_url=url)
    _, h, csv = await get(http, proxy.proxy_url + "/report", headers={"Accept": "text/csv"})
    assert csv == b"a,b\n1,2\n"
    _, h, js = await get(http, proxy.proxy_url + "/report", headers={"Accept": "application/json"})
    assert h["Content-Type"].startswith("application/json") and msgspec.json.decode(js)["path"] == "/report"
    _, h, csv2 = await get(http, proxy.proxy_url + "/report", headers={"Accept": "text/csv"})
    assert (csv2, h["Cache-Status"].startswith("sidecache; hit")) == (csv, True)


async def test_vary_star_is_never_stored_on_a_ruled_route(make_proxy: ProxyFactory, upstream: Upstream,
                                                         http: aiohttp.ClientSession) -> None:
    upstream.reply("/a/stats", headers={"Vary": "*"})
    proxy = await make_proxy(SHARED)
    _, h, _ = await get(http, proxy.proxy_url + "/a/stats")
    assert "detail=vary-star" in h["Cache-Status"]
    await get(http, proxy.proxy_url + "/a/stats")
    assert upstream.hits["/a/stats"] == 2


async def test_concurrent_cold_requests_from_several_origins_each_get_their_own_cors(
    make_proxy: ProxyFactory, cors: tuple[Cors, str], http: aiohttp.ClientSession
) -> None:
    origin, url = cors
    origin.delay = 0.2  # every request arrives while the first fill is still in flight
    proxy = await make_proxy(SHARED, upstream_url=url)
    origins = [f"https://app{i}.example" for i in range(3)] * 4
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/a/stats", headers={"Origin": o}) for o in origins))
    assert [h.get("Access-Control-Allow-Origin") for _, h, _ in got] == origins
    assert origin.hits["/a/stats"] == 3  # one fill per Origin, shared by that Origin's own waiters
    for o in origins[:3]:
        _, h, _ = await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": o})
        assert h["Access-Control-Allow-Origin"] == o and h["Cache-Status"].startswith("sidecache; hit")
    assert origin.hits["/a/stats"] == 3


async def test_concurrent_csv_and_json_clients_each_get_their_own_format(
    make_proxy: ProxyFactory, cors: tuple[Cors, str], http: aiohttp.ClientSession
) -> None:
    origin, url = cors
    origin.delay = 0.2
    proxy = await make_proxy(SHARED, upstream_url=url)
    accepts = ["text/csv", "application/json"] * 3
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/report", headers={"Accept": a}) for a in accepts))
    assert [(body == b"a,b\n1,2\n", h["Content-Type"].split(";")[0]) for _, h, body in got] == \
        [(a == "text/csv", a) for a in accepts]
    assert origin.hits["/report"] == 2


async def test_collapsed_waiters_never_take_a_vary_star_answer(make_proxy: ProxyFactory, upstream: Upstream,
                                                               http: aiohttp.ClientSession) -> None:
    upstream.reply("/a/stats", headers={"Vary": "*"}, delay=0.2, vary_on="X-User")
    proxy = await make_proxy(SHARED)
    users = [f"u{i}" for i in range(4)]
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/a/stats", headers={"X-User": u}) for u in users))
    assert [msgspec.json.decode(body)["X-User"] for _, _, body in got] == users
    assert sum("detail=uncacheable-vary-star" in h["Cache-Status"] for _, h, _ in got) == 3  # but the fill's own
    assert upstream.hits["/a/stats"] == 4


async def test_concurrent_refreshes_of_two_variants_each_get_their_own_without_a_rule(
    make_proxy: ProxyFactory, cors: tuple[Cors, str], http: aiohttp.ClientSession
) -> None:
    origin, url = cors
    origin.cache_control = "max-age=1"
    proxy = await make_proxy("", upstream_url=url)  # no rule: the origin's own headers govern
    origins = ["https://a.example", "https://b.example"]
    for o in origins:
        _, h, _ = await get(http, proxy.proxy_url + "/x", headers={"Origin": o})
        assert "stored" in h["Cache-Status"]
    await asyncio.sleep(1.1)  # both variants stale: revalidated with their own ETag, once per variant
    origin.delay = 0.2
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/x", headers={"Origin": o}) for o in origins * 3))
    assert [h.get("Access-Control-Allow-Origin") for _, h, _ in got] == origins * 3
    assert all(h["Cache-Status"].startswith("sidecache; fwd=stale") for _, h, _ in got)
    assert origin.hits["/x"] == 4  # two fills, then one revalidation per variant


async def test_concurrent_misses_of_two_variants_are_one_call_each_without_a_rule(
    make_proxy: ProxyFactory, cors: tuple[Cors, str], http: aiohttp.ClientSession
) -> None:
    origin, url = cors
    origin.cache_control, origin.delay = "max-age=60", 0.2
    proxy = await make_proxy("", upstream_url=url)
    origins = ["https://a.example", "https://b.example"] * 3
    got = await asyncio.gather(*(get(http, proxy.proxy_url + "/y", headers={"Origin": o}) for o in origins))
    assert [h.get("Access-Control-Allow-Origin") for _, h, _ in got] == origins
    assert origin.hits["/y"] == 2  # the waiters of the variant the first miss did not store wait for their own


# --- 11.5 no client ever receives another client's cookie ---------------------------------------------------

PERSONAL = """
[[route]]
name = "me"
match = "GET /me/{case}"
ttl = "1m"
share = "all-users"
uncacheable_bodies = ["null"]
"""


class Sessions:
    """An origin that gives each user its own session cookie, slowly, so that 8 users collapse onto one fill."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/me/{case}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        case = request.match_info["case"]
        self.calls[case] += 1
        await asyncio.sleep(0.2)
        user = request.headers.get("Cookie", "").removeprefix("user=")
        headers = {"Set-Cookie": f"session=SECRET-{user}"}
        if case == "private-404":
            return web.Response(status=404, body=f"only for {user}".encode(), headers={"Cache-Control": "private"})
        status, body = {"404": (404, b"nope"), "403": (403, b"no"), "500": (500, b"oops"), "null": (200, b"null"),
                        "large": (200, b"x" * 300_000)}[case]
        return web.Response(status=status, body=body, headers=headers)


@pytest.mark.parametrize("case", ["404", "403", "500", "null", "large", "private-404"])
async def test_collapsed_users_never_receive_another_users_cookie_or_private_body(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, case: str
) -> None:
    origin = Sessions()
    server = TestServer(origin.app(), host="127.0.0.1")
    await server.start_server()
    try:
        config = Config(memory=MemoryConfig(max_entry_bytes=100_000))
        proxy = await make_proxy(PERSONAL, config=config, upstream_url=str(server.make_url("")).rstrip("/"))
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh:
            got = await asyncio.gather(*(get(fresh, proxy.proxy_url + f"/me/{case}", headers={"Cookie": f"user={u}"})
                                         for u in range(8)))
        for user, (_, headers, body) in enumerate(got):
            if case == "private-404":
                assert body == f"only for {user}".encode()
            else:
                assert headers.get("Set-Cookie") == f"session=SECRET-{user}"
    finally:
        await server.close()


# --- 11.6 forwarding headers are this hop's -----------------------------------------------------------------


async def test_a_clients_forwarding_headers_never_shape_a_shared_answer(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(SHARED)
    evil = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "gopher", "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6;host=evil.example"}
    await get(http, proxy.proxy_url + "/a/stats", headers=evil)  # a shared fill
    fill = upstream.seen[-1].headers
    assert "X-Forwarded-Host" not in fill and "evil.example" not in fill.get("Forwarded", "")
    assert (fill["X-Forwarded-Proto"], fill["X-Forwarded-For"]) == ("http", "127.0.0.1")
    await get(http, proxy.proxy_url + "/not-ruled", headers=evil)  # the client's own request, passed through
    passed = upstream.seen[-1].headers
    assert passed["X-Forwarded-Host"] == proxy.proxy_url.removeprefix("http://")
    assert (passed["X-Forwarded-Proto"], passed["X-Forwarded-For"]) == ("http", "127.0.0.1")
    assert passed["Forwarded"] == f'for="127.0.0.1";proto=http;host="{passed["X-Forwarded-Host"]}"'


async def test_a_trusted_proxys_forwarding_headers_are_kept(make_proxy: ProxyFactory, upstream: Upstream,
                                                           http: aiohttp.ClientSession) -> None:
    config = msgspec.convert({"server": {"trusted_proxies": ["127.0.0.0/8"]}}, Config)
    proxy = await make_proxy(config=config)
    await get(http, proxy.proxy_url + "/x", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                                                      "X-Forwarded-Host": "app.example"})
    seen = upstream.seen[-1].headers
    assert (seen["X-Forwarded-For"], seen["X-Forwarded-Proto"]) == ("203.0.113.9, 127.0.0.1", "https")
    assert seen["X-Forwarded-Host"] == "app.example"


# --- 11.7 a forced refresh reaches the backend --------------------------------------------------------------


async def test_a_forced_refresh_always_reaches_the_backend_and_refreshes_the_plain_entry(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(SHARED)
    base = proxy.proxy_url + "/d/judge?stat_types=hits"
    await get(http, base + "&force_refresh=false")
    for n in (2, 3):
        _, _, body = await get(http, base + "&force_refresh=true")
        assert msgspec.json.decode(body)["n"] == n
    _, h, plain = await get(http, base)
    assert h["Cache-Status"].startswith("sidecache; hit") and msgspec.json.decode(plain)["n"] == 3
    _, h, _ = await get(http, base + "&force_refresh=false")
    assert h["Cache-Status"].startswith("sidecache; hit")
    assert upstream.hits["/d/judge"] == 3


# --- 11.8 purges are final ----------------------------------------------------------------------------------


async def test_a_purge_by_url_removes_every_vary_variant(make_proxy: ProxyFactory, cors: tuple[Cors, str],
                                                        http: aiohttp.ClientSession) -> None:
    origin, url = cors
    proxy = await make_proxy(SHARED, upstream_url=url)
    for o in ("https://a.example", "https://b.example"):
        await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": o})
    async with http.post(proxy.admin_url + "/purge", json={"url": "/a/stats"}) as r:
        assert r.status == 200
    for o in ("https://a.example", "https://b.example"):
        _, h, _ = await get(http, proxy.proxy_url + "/a/stats", headers={"Origin": o})
        assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    assert origin.hits["/a/stats"] == 4


async def test_a_fill_that_began_before_a_purge_does_not_store(make_proxy: ProxyFactory, upstream: Upstream,
                                                              http: aiohttp.ClientSession) -> None:
    upstream.reply("/a/stats", delay=0.3)
    proxy = await make_proxy(SHARED)
    slow = asyncio.ensure_future(get(http, proxy.proxy_url + "/a/stats"))
    await asyncio.sleep(0.1)
    async with http.post(proxy.admin_url + "/purge", json={"route": "live"}) as r:
        assert r.status == 200
    status, h, _ = await slow
    assert status == 200 and "stored" not in h["Cache-Status"]
    _, h, _ = await get(http, proxy.proxy_url + "/a/stats")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    assert upstream.hits["/a/stats"] == 2
