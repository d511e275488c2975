"""HTTP caching through a real proxy and origin: RFC 9111 for unruled routes, validators, 304s, negative caching."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.config.settings import Config, DefaultsConfig
from tests.support.client import get
from tests.support.factories import ProxyFactory
from tests.support.lanes import ECHO_RULES
from tests.support.upstream import Upstream

# --- routes without a rule: the origin's headers decide ---------------------------------------------------


async def test_max_age_is_stored_and_served_until_it_expires(make_proxy: ProxyFactory, upstream: Upstream,
                                                              http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    upstream.reply("/doc", body=b"v1", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(clock=lambda: now[0])
    _, h1, _ = await get(http, proxy.proxy_url + "/doc")
    _, h2, b2 = await get(http, proxy.proxy_url + "/doc")
    assert h1["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored"
    assert (b2, h2["Cache-Status"], h2["Age"]) == (b"v1", "sidecache; hit; ttl=60", "0")
    now[0] += 61
    _, h3, _ = await get(http, proxy.proxy_url + "/doc")
    assert h3["Cache-Status"].startswith("sidecache; fwd=miss")
    assert upstream.hits["/doc"] == 2


async def test_upstream_age_counts_against_freshness(make_proxy: ProxyFactory, upstream: Upstream,
                                                     http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60", "Age": "50"})
    proxy = await make_proxy(clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/doc")
    _, h, _ = await get(http, proxy.proxy_url + "/doc")
    assert (h["Cache-Status"], h["Age"]) == ("sidecache; hit; ttl=10", "50")
    now[0] += 11
    _, h, _ = await get(http, proxy.proxy_url + "/doc")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")


async def test_what_the_origin_forbids_is_never_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                                       http: aiohttp.ClientSession) -> None:
    cases = {
        "/none": ({}, "no-freshness"),
        "/nostore": ({"Cache-Control": "max-age=60, no-store"}, "no-store"),
        "/private": ({"Cache-Control": "max-age=60, private"}, "private"),
        "/cookie": ({"Cache-Control": "max-age=60", "Set-Cookie": "a=1"}, "set-cookie"),
        "/star": ({"Cache-Control": "max-age=60", "Vary": "*"}, "vary-star"),
    }
    for path, (headers, _) in cases.items():
        upstream.reply(path, headers=headers)
    proxy = await make_proxy()
    for path, (_, reason) in cases.items():
        for _ in range(2):
            _, h, _ = await get(http, proxy.proxy_url + path)
        assert h["Cache-Status"] == f"sidecache; fwd=miss; fwd-status=200; detail={reason}", path
        assert upstream.hits[path] == 2, path


async def test_any_final_status_with_explicit_freshness_is_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                                                  http: aiohttp.ClientSession) -> None:
    stored = {"/found": 302, "/bad": 400, "/err": 500, "/odd": 599}
    for path, status in stored.items():
        upstream.reply(path, status=status, body=path.encode(), headers={"Cache-Control": "max-age=60"})
    upstream.reply("/created", status=201, body=b"c")  # no explicit freshness, not heuristically cacheable
    upstream.reply("/err-bare", status=500, body=b"e")
    proxy = await make_proxy(clock=lambda: 1000.0)
    for path, status in stored.items():
        s1, h1, _ = await get(http, proxy.proxy_url + path, allow_redirects=False)
        s2, h2, b2 = await get(http, proxy.proxy_url + path, allow_redirects=False)
        assert (s1, h1["Cache-Status"]) == (status, f"sidecache; fwd=miss; fwd-status={status}; stored"), path
        assert (s2, b2, h2["Cache-Status"]) == (status, path.encode(), "sidecache; hit; ttl=60"), path
        assert upstream.hits[path] == 1, path
    for path, detail in (("/created", "status-201"), ("/err-bare", "status-500")):
        for _ in range(2):
            s, h, _ = await get(http, proxy.proxy_url + path)
        assert h["Cache-Status"].endswith(f"detail={detail}") and upstream.hits[path] == 2, path


async def test_a_ruled_route_stores_an_unlisted_status_only_with_the_origins_freshness(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    upstream.reply("/players/down", status=503, body=b"busy", headers={"Cache-Control": "max-age=5"})
    upstream.reply("/players/err", status=500, body=b"err")
    upstream.reply("/players/long", status=500, body=b"err", headers={"Cache-Control": "max-age=3600"})
    proxy = await make_proxy(RULE, clock=lambda: now[0])
    for _ in range(2):
        s, h, _ = await get(http, proxy.proxy_url + "/players/down")
    assert (s, h["Cache-Status"]) == (503, "sidecache; hit; ttl=5")  # the origin's 5 s, not negative_ttl's 30 s
    _, h, _ = await get(http, proxy.proxy_url + "/players/long")
    _, h, _ = await get(http, proxy.proxy_url + "/players/long")
    assert h["Cache-Status"] == "sidecache; hit; ttl=30"  # never longer than the rule's negative_ttl
    for _ in range(2):
        s, h, _ = await get(http, proxy.proxy_url + "/players/err")
    assert (s, h["Cache-Status"]) == (500, "sidecache; fwd=miss; fwd-status=500; detail=status-500")
    now[0] += 6
    await get(http, proxy.proxy_url + "/players/down")
    assert (upstream.hits["/players/down"], upstream.hits["/players/err"]) == (2, 2)


async def test_authorization_needs_public_or_s_maxage(make_proxy: ProxyFactory, upstream: Upstream,
                                                      http: aiohttp.ClientSession) -> None:
    upstream.reply("/mine", headers={"Cache-Control": "max-age=60"})
    upstream.reply("/ours", headers={"Cache-Control": "public, max-age=60"})
    proxy = await make_proxy()
    auth = {"Authorization": "Bearer u1"}
    for _ in range(2):
        await get(http, proxy.proxy_url + "/mine", headers=auth)
        await get(http, proxy.proxy_url + "/ours", headers=auth)
    assert (upstream.hits["/mine"], upstream.hits["/ours"]) == (2, 1)


async def test_vary_keeps_one_variant_per_header_value(make_proxy: ProxyFactory, upstream: Upstream,
                                                       http: aiohttp.ClientSession) -> None:
    upstream.reply("/v", headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
                   vary_on="Accept-Language")
    proxy = await make_proxy()
    results = {}
    for lang in ("en", "de", "en", "de", "fr"):
        _, h, b = await get(http, proxy.proxy_url + "/v", headers={"Accept-Language": lang})
        results.setdefault(lang, []).append((b, h["Cache-Status"].split(";")[1].strip()))
    assert results["en"] == [(b'{"Accept-Language":"en"}', "fwd=miss"), (b'{"Accept-Language":"en"}', "hit")]
    assert results["de"] == [(b'{"Accept-Language":"de"}', "fwd=miss"), (b'{"Accept-Language":"de"}', "hit")]
    assert upstream.hits["/v"] == 3


async def test_no_cache_revalidates_every_use_with_the_origins_etag(make_proxy: ProxyFactory, upstream: Upstream,
                                                                    http: aiohttp.ClientSession) -> None:
    upstream.reply("/nc", body=b"body-1", headers={"Cache-Control": "no-cache", "ETag": '"e1"'})
    proxy = await make_proxy()
    await get(http, proxy.proxy_url + "/nc")
    s, h, b = await get(http, proxy.proxy_url + "/nc")
    assert (s, b) == (200, b"body-1")
    assert h["Cache-Status"] == "sidecache; fwd=stale; fwd-status=304; stored"
    assert upstream.seen[-1].headers["If-None-Match"] == '"e1"'
    assert upstream.hits["/nc"] == 2


async def test_stale_if_error_from_the_origins_header_and_must_revalidate(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    upstream.reply("/soft", body=b"old", headers={"Cache-Control": "max-age=1, stale-if-error=600"})
    upstream.reply("/strict", body=b"old", headers={"Cache-Control": "max-age=1, must-revalidate, stale-if-error=600"})
    proxy = await make_proxy(clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/soft")
    await get(http, proxy.proxy_url + "/strict")
    down = await make_proxy(clock=lambda: now[0], upstream_url="http://127.0.0.1:1")
    for key, entry in proxy.memory.items():
        down.memory.set(key, entry)
    now[0] += 30
    same_host = {"Host": proxy.proxy_url.removeprefix("http://")}  # the key holds the URI's authority
    s, h, b = await get(http, down.proxy_url + "/soft", headers=same_host)
    assert (s, b) == (200, b"old") and "detail=stale-if-error" in h["Cache-Status"]
    s, _, _ = await get(http, down.proxy_url + "/strict", headers=same_host)
    assert s == 502  # must-revalidate: never served stale


async def test_head_is_answered_from_a_stored_get(make_proxy: ProxyFactory, upstream: Upstream,
                                                  http: aiohttp.ClientSession) -> None:
    upstream.reply("/doc", body=b"12345", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy()
    await get(http, proxy.proxy_url + "/doc")
    async with http.head(proxy.proxy_url + "/doc") as r:
        assert (r.status, r.headers["Content-Length"], await r.read()) == (200, "5", b"")
        assert r.headers["Cache-Status"].startswith("sidecache; hit")
    assert [s.method for s in upstream.seen] == ["GET"]


async def test_client_no_cache_fetches_again_on_unruled_routes(make_proxy: ProxyFactory, upstream: Upstream,
                                                               http: aiohttp.ClientSession) -> None:
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy()
    await get(http, proxy.proxy_url + "/doc")
    _, h, _ = await get(http, proxy.proxy_url + "/doc", headers={"Cache-Control": "no-cache"})
    assert h["Cache-Status"] == "sidecache; fwd=request; fwd-status=200; stored"
    assert upstream.hits["/doc"] == 2


async def test_successful_unsafe_request_invalidates_the_uri(make_proxy: ProxyFactory, upstream: Upstream,
                                                             http: aiohttp.ClientSession) -> None:
    upstream.reply("/items/1", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy("""
[[route]]
name = "item"
match = "GET /rules/{id}"
ttl = "5m"
""")
    for path in ("/items/1", "/rules/1"):
        await get(http, proxy.proxy_url + path)
        _, h, _ = await get(http, proxy.proxy_url + path)
        assert h["Cache-Status"].startswith("sidecache; hit"), path
        async with http.put(proxy.proxy_url + path, data=b"new") as r:
            assert r.status == 200
        _, h, _ = await get(http, proxy.proxy_url + path)
        assert h["Cache-Status"].startswith("sidecache; fwd=miss"), path
    upstream.reply("/items/1", status=409, headers={"Cache-Control": "max-age=60"})
    async with http.delete(proxy.proxy_url + "/items/1") as r:
        assert r.status == 409
    upstream.reply("/items/1", headers={"Cache-Control": "max-age=60"})
    _, h, _ = await get(http, proxy.proxy_url + "/items/1")
    assert h["Cache-Status"].startswith("sidecache; hit")  # a failed DELETE changed nothing


async def test_unruled_pass_stores_nothing(make_proxy: ProxyFactory, upstream: Upstream,
                                           http: aiohttp.ClientSession) -> None:
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(config=Config(defaults=DefaultsConfig(unruled="pass")))
    for _ in range(2):
        _, h, _ = await get(http, proxy.proxy_url + "/doc")
    assert h["Cache-Status"] == "sidecache; fwd=bypass; detail=no-rule"
    assert upstream.hits["/doc"] == 2


# --- validators for clients, on ruled routes too ---------------------------------------------------------

RULE = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""


async def test_every_stored_answer_has_an_etag_and_conditions_get_a_304(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/players/a", body=b'{"a": 1}')
    upstream.reply("/players/b", body=b'{"b": 1}', headers={"ETag": '"origin-b"',
                                                            "Last-Modified": "Tue, 01 Jul 2025 10:00:00 GMT"})
    proxy = await make_proxy(RULE)
    _, h, _ = await get(http, proxy.proxy_url + "/players/a")
    etag = h["ETag"]
    assert etag.startswith('"sc-')
    s, h, b = await get(http, proxy.proxy_url + "/players/a", headers={"If-None-Match": etag})
    assert (s, b, h["ETag"]) == (304, b"", etag)
    assert h["Cache-Status"].startswith("sidecache; hit")
    s, _, _ = await get(http, proxy.proxy_url + "/players/a", headers={"If-None-Match": '"other"'})
    assert s == 200
    await get(http, proxy.proxy_url + "/players/b")
    s, h, _ = await get(http, proxy.proxy_url + "/players/b",
                        headers={"If-Modified-Since": "Tue, 01 Jul 2025 10:00:00 GMT"})
    assert (s, h["ETag"]) == (304, '"origin-b"')
    assert upstream.hits["/players/a"] == 1 and upstream.hits["/players/b"] == 1


async def test_expired_entry_is_revalidated_with_the_origins_etag(make_proxy: ProxyFactory, upstream: Upstream,
                                                                  http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    upstream.reply("/players/a", body=b'{"v": 1}', headers={"ETag": '"v1"'})
    proxy = await make_proxy(RULE, clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/a")
    now[0] += 301
    s, h, b = await get(http, proxy.proxy_url + "/players/a")
    assert (s, b) == (200, b'{"v": 1}')
    assert h["Cache-Status"] == "sidecache; fwd=stale; fwd-status=304; stored; detail=revalidated"
    assert upstream.seen[-1].headers["If-None-Match"] == '"v1"'
    _, h, _ = await get(http, proxy.proxy_url + "/players/a")
    assert h["Cache-Status"] == "sidecache; hit; ttl=300"  # the 304 renewed the lifetime


async def test_echo_routes_tag_each_callers_body(make_proxy: ProxyFactory, upstream: Upstream,
                                                 http: aiohttp.ClientSession) -> None:
    upstream.reply("/props/p1", body=b'{"prop_id": "p1", "x": 1}')
    proxy = await make_proxy(ECHO_RULES)
    _, h1, _ = await get(http, proxy.proxy_url + "/props/p1?player=j")
    _, h2, _ = await get(http, proxy.proxy_url + "/props/p2?player=j")
    assert h1["ETag"] != h2["ETag"]
    s, _, _ = await get(http, proxy.proxy_url + "/props/p2?player=j", headers={"If-None-Match": h2["ETag"]})
    assert s == 304


async def test_negative_answers_are_kept_for_negative_ttl(make_proxy: ProxyFactory, upstream: Upstream,
                                                          http: aiohttp.ClientSession) -> None:
    now = [1000.0]
    upstream.reply("/players/ghost", status=404, body=b'{"error": "not found"}')
    proxy = await make_proxy(RULE + 'cache_status = [200, 404]\nnegative_ttl = "10s"\n', clock=lambda: now[0])
    await get(http, proxy.proxy_url + "/players/ghost")
    s, h, _ = await get(http, proxy.proxy_url + "/players/ghost")
    assert (s, h["Cache-Status"]) == (404, "sidecache; hit; ttl=10")
    now[0] += 11
    await get(http, proxy.proxy_url + "/players/ghost")
    assert upstream.hits["/players/ghost"] == 2


async def test_client_no_cache_is_ignored_unless_the_rule_says_revalidate(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    ignoring = await make_proxy(RULE)
    revalidating = await make_proxy(RULE.replace('"player"', '"p2"') + 'client_no_cache = "revalidate"\n')
    for proxy in (ignoring, revalidating):
        await get(http, proxy.proxy_url + "/players/a")
        await asyncio.gather(*(get(http, proxy.proxy_url + "/players/a", headers={"Cache-Control": "no-cache"})
                               for _ in range(3)))
    assert upstream.hits["/players/a"] == 1 + 1 + 1  # ignoring: 1; revalidating: 1 + one coalesced refetch


async def test_purge_by_url_reaches_answers_stored_without_a_rule(make_proxy: ProxyFactory, upstream: Upstream,
                                                                  http: aiohttp.ClientSession) -> None:
    upstream.reply("/doc", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy()
    await get(http, proxy.proxy_url + "/doc?v=1")
    async with http.post(proxy.admin_url + "/purge", json={"url": "/doc?v=1"}) as r:
        assert await r.json() == {"purged": 1}
    _, h, _ = await get(http, proxy.proxy_url + "/doc?v=1")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")
    async with http.post(proxy.admin_url + "/purge", json={"url": "doc"}) as r:
        assert r.status == 400


# --- RFC 9111 details: dates, targeted fields, field lines, Date and Age, invalidation, ranges -------------

T0 = 1_750_000_000.0  # Sun, 15 Jun 2025 15:06:40 GMT
T0_DATE = "Sun, 15 Jun 2025 15:06:40 GMT"


async def test_expires_counts_only_when_it_is_a_valid_http_date(make_proxy: ProxyFactory, upstream: Upstream,
                                                                http: aiohttp.ClientSession) -> None:
    cases = {
        "/imf": ([("Expires", "Sun, 15 Jun 2025 15:07:40 GMT")], "stored"),
        "/rfc850": ([("Expires", "Sunday, 15-Jun-25 15:07:40 GMT")], "stored"),
        "/asctime": ([("Expires", "Sun Jun 15 15:07:40 2025")], "stored"),
        "/utc": ([("Expires", "Sun, 15 Jun 2025 15:07:40 UTC")], "detail=stale-on-arrival"),
        "/hour": ([("Expires", "Sun, 15 Jun 2025 5:07:40 GMT")], "detail=stale-on-arrival"),
        "/year": ([("Expires", "Sun, 15 Jun 25 15:07:40 GMT")], "detail=stale-on-arrival"),
        "/twice": ([("Expires", "Sun, 15 Jun 2025 15:07:40 GMT")] * 2, "detail=stale-on-arrival"),
    }
    for path, (lines, _) in cases.items():
        upstream.reply(path, headers={"Date": T0_DATE}, lines=lines)
    proxy = await make_proxy(clock=lambda: T0)
    for path, (_, outcome) in cases.items():
        await get(http, proxy.proxy_url + path)
        _, h, _ = await get(http, proxy.proxy_url + path)
        if outcome == "stored":
            assert h["Cache-Status"] == "sidecache; hit; ttl=60", path
        else:
            assert h["Cache-Status"] == f"sidecache; fwd=miss; fwd-status=200; {outcome}", path
        assert upstream.hits[path] == (1 if outcome == "stored" else 2), path


async def test_targeted_cache_control_replaces_cache_control_for_the_proxy_only(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/cdn", headers={"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=60"})
    upstream.reply("/own", headers={"Sidecache-Cache-Control": "no-store", "CDN-Cache-Control": "max-age=60"})
    upstream.reply("/bad", headers={"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=60, &&"})
    proxy = await make_proxy(clock=lambda: T0)
    for _ in range(2):
        _, h, _ = await get(http, proxy.proxy_url + "/cdn")
    assert h["Cache-Status"] == "sidecache; hit; ttl=60"
    assert (h["Cache-Control"], h["CDN-Cache-Control"]) == ("no-store", "max-age=60")  # passed on unchanged
    for path, detail in (("/own", "no-store"), ("/bad", "no-store")):  # ours first; an invalid one is ignored
        for _ in range(2):
            _, h, _ = await get(http, proxy.proxy_url + path)
        assert h["Cache-Status"] == f"sidecache; fwd=miss; fwd-status=200; detail={detail}", path
    off = await make_proxy(config=Config(defaults=DefaultsConfig(targeted_cache_control=())))
    for _ in range(2):
        _, h, _ = await get(http, off.proxy_url + "/cdn")
    assert h["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=no-store"
    assert (upstream.hits["/cdn"], upstream.hits["/own"], upstream.hits["/bad"]) == (3, 2, 2)


async def test_targeted_cache_control_lets_a_ruled_route_store_what_browsers_must_not(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/players/a", headers={"Cache-Control": "private", "Sidecache-Cache-Control": "max-age=60"})
    upstream.reply("/players/b", headers={"Cache-Control": "private"})
    proxy = await make_proxy(RULE)
    for path in ("/players/a", "/players/b"):
        for _ in range(2):
            _, h, _ = await get(http, proxy.proxy_url + path)
    assert (upstream.hits["/players/a"], upstream.hits["/players/b"]) == (1, 2)


async def test_cache_control_lines_are_one_list(make_proxy: ProxyFactory, upstream: Upstream,
                                                http: aiohttp.ClientSession) -> None:
    upstream.reply("/two", lines=[("Cache-Control", "public"), ("Cache-Control", "s-maxage=60")])
    upstream.reply("/later-no-store", lines=[("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")])
    upstream.reply("/quoted", lines=[("Cache-Control", 'extension="max-age=3600", max-age=1')])
    now = [T0]
    proxy = await make_proxy(clock=lambda: now[0])
    for path in ("/two", "/later-no-store", "/quoted"):
        await get(http, proxy.proxy_url + path)
    _, h, _ = await get(http, proxy.proxy_url + "/two")
    assert h["Cache-Status"] == "sidecache; hit; ttl=60"  # the second line's s-maxage counts
    _, h, _ = await get(http, proxy.proxy_url + "/later-no-store")
    assert h["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; detail=no-store"
    now[0] += 2
    _, h, _ = await get(http, proxy.proxy_url + "/quoted")
    assert h["Cache-Status"].startswith("sidecache; fwd=miss")  # max-age=1, not the quoted 3600


async def test_answers_from_cache_keep_the_origins_date_and_count_its_age(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    now = [T0]
    upstream.reply("/dated", headers={"Cache-Control": "max-age=600", "Date": "Sun, 15 Jun 2025 15:06:10 GMT",
                                      "ETag": '"d1"'})
    upstream.reply("/aged", headers={"Cache-Control": "max-age=600", "Date": T0_DATE}, lines=[("Age", "100, 5")])
    upstream.reply("/junk-age", headers={"Cache-Control": "max-age=600", "Date": T0_DATE, "Age": "-7200"})
    proxy = await make_proxy(clock=lambda: now[0])
    for path in ("/dated", "/aged", "/junk-age"):
        await get(http, proxy.proxy_url + path)
    now[0] += 10
    _, h, _ = await get(http, proxy.proxy_url + "/dated")
    # the origin dated it 30 s before it arrived: that is its age, and its Date is the origin's
    assert (h["Date"], h["Age"]) == ("Sun, 15 Jun 2025 15:06:10 GMT", "40")
    assert h["Cache-Status"] == "sidecache; hit; ttl=560"
    s, h, _ = await get(http, proxy.proxy_url + "/dated", headers={"If-None-Match": '"d1"'})
    assert (s, h["Date"]) == (304, "Sun, 15 Jun 2025 15:06:10 GMT")
    _, h, _ = await get(http, proxy.proxy_url + "/aged")
    assert (h["Age"], h["Cache-Status"]) == ("110", "sidecache; hit; ttl=490")  # Age: the first member
    _, h, _ = await get(http, proxy.proxy_url + "/junk-age")
    assert (h["Age"], h["Cache-Status"]) == ("10", "sidecache; hit; ttl=590")  # not an integer: ignored
    assert [upstream.hits[p] for p in ("/dated", "/aged", "/junk-age")] == [1, 1, 1]


async def test_any_unsafe_method_invalidates_its_uri_and_same_origin_locations(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy()
    cached = ["/items/1", "/items/2", "/items/3", "/items/4", "/items/5"]
    for path in cached:
        upstream.reply(path, headers={"Cache-Control": "max-age=600"})
    upstream.reply("/make", status=201, headers={
        "Location": "/items/2", "Content-Location": upstream.url + "/items/3",
    })
    upstream.reply("/make-elsewhere", status=201, headers={
        "Location": proxy.proxy_url + "/items/4", "Content-Location": "http://127.0.0.2:1/items/5",
    })

    async def hit(path: str) -> bool:
        _, h, _ = await get(http, proxy.proxy_url + path)
        return h["Cache-Status"].startswith("sidecache; hit")

    for path in cached:
        await get(http, proxy.proxy_url + path)
    assert all([await hit(p) for p in cached])
    async with http.request("M-SEARCH", proxy.proxy_url + "/items/1") as r:
        assert r.status == 200
    async with http.post(proxy.proxy_url + "/make", data=b"x") as r:
        assert r.status == 201
    async with http.post(proxy.proxy_url + "/make-elsewhere", data=b"x") as r:
        assert r.status == 201
    assert [await hit(p) for p in cached] == [False, False, False, False, True]  # /items/5: another origin
    assert [s.method for s in upstream.seen].count("M-SEARCH") == 1


async def test_a_range_of_a_stored_answer_is_answered_from_cache(make_proxy: ProxyFactory, upstream: Upstream,
                                                                 http: aiohttp.ClientSession) -> None:
    upstream.reply("/file", body=b"0123456789", headers={"Cache-Control": "max-age=600", "ETag": '"f1"',
                                                         "Content-Type": "text/plain"})
    proxy = await make_proxy()
    await get(http, proxy.proxy_url + "/file")
    cases = [
        ({"Range": "bytes=0-1"}, 206, b"01", "bytes 0-1/10"),
        ({"Range": "bytes=5-"}, 206, b"56789", "bytes 5-9/10"),
        ({"Range": "bytes=-3"}, 206, b"789", "bytes 7-9/10"),
        ({"Range": "bytes=20-"}, 416, b"", "bytes */10"),
        ({"Range": "bytes=0-1,3-4"}, 200, b"0123456789", None),  # several ranges: the whole answer
        ({"Range": "bytes=2-3", "If-Range": '"f1"'}, 206, b"23", "bytes 2-3/10"),
        ({"Range": "bytes=2-3", "If-Range": '"old"'}, 200, b"0123456789", None),  # changed since: all of it
    ]
    for headers, status, body, content_range in cases:
        s, h, b = await get(http, proxy.proxy_url + "/file", headers=headers)
        assert (s, b, h.get("Content-Range")) == (status, body, content_range), headers
        assert h["Cache-Status"].startswith("sidecache; hit"), headers
        assert h["Content-Length"] == str(len(body)), headers
    async with http.head(proxy.proxy_url + "/file", headers={"Range": "bytes=0-1"}) as r:
        assert (r.status, r.headers["Content-Length"]) == (200, "10")  # ranges are for GET only (RFC 9110 14.2)
    assert upstream.hits["/file"] == 1


async def test_a_range_miss_is_forwarded_and_its_206_not_stored(make_proxy: ProxyFactory, upstream: Upstream,
                                                                http: aiohttp.ClientSession) -> None:
    upstream.reply("/part", status=206, body=b"01",
                   headers={"Cache-Control": "max-age=600", "Content-Range": "bytes 0-1/10"})
    proxy = await make_proxy()
    for _ in range(2):
        s, h, b = await get(http, proxy.proxy_url + "/part", headers={"Range": "bytes=0-1"})
        assert (s, b, h["Content-Range"]) == (206, b"01", "bytes 0-1/10")
    assert h["Cache-Status"] == "sidecache; fwd=miss; fwd-status=206; detail=status-206"
    assert [s.headers.get("Range") for s in upstream.seen] == ["bytes=0-1", "bytes=0-1"]


async def test_ruled_routes_answer_ranges_from_cache_too(make_proxy: ProxyFactory, upstream: Upstream,
                                                         http: aiohttp.ClientSession) -> None:
    upstream.reply("/players/a", body=b'{"name": "a"}')
    proxy = await make_proxy(RULE)
    s, _, b = await get(http, proxy.proxy_url + "/players/a", headers={"Range": "bytes=0-1"})
    assert (s, b) == (200, b'{"name": "a"}')  # the fill is shared: fetched and answered whole
    assert "Range" not in upstream.seen[0].headers
    s, h, b = await get(http, proxy.proxy_url + "/players/a", headers={"Range": "bytes=0-1"})
    assert (s, b, h["Content-Range"]) == (206, b'{"', "bytes 0-1/13")


async def test_no_cache_with_field_names_keeps_those_fields_out_of_answers_from_cache(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    upstream.reply("/doc", headers={"A": "1", "B": "2", "C": "3"},
                   lines=[("Cache-Control", 'no-cache="a, b"'), ("Cache-Control", "max-age=3600")])
    proxy = await make_proxy()
    _, first, _ = await get(http, proxy.proxy_url + "/doc")
    _, h, _ = await get(http, proxy.proxy_url + "/doc")
    assert (first["A"], first["B"]) == ("1", "2")  # the answer fetched for this client is whole
    assert h["Cache-Status"].startswith("sidecache; hit")
    assert ("A" in h, "B" in h, h["C"]) == (False, False, "3")
    assert upstream.hits["/doc"] == 1
