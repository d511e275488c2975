"""The admin listener: health, stats, metrics, rules and purge, through real HTTP."""

from __future__ import annotations

import io

import aiohttp
import msgspec

from proxy.config.settings import Config, ListenConfig
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
tags = ["player:{name}"]

[[route]]
name = "team"
match = "GET /teams/{team}"
ttl = "5m"
"""


async def fill(http: aiohttp.ClientSession, base: str, *paths: str) -> list[str]:
    out = []
    for p in paths:
        async with http.get(base + p) as r:
            await r.read()
            out.append(r.headers["Cache-Status"])
    return out


async def test_health_and_readiness(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.get(proxy.admin_url + "/healthz") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    async with http.get(proxy.admin_url + "/readyz") as r:
        assert r.status == 200
        assert (await r.json())["upstream"]["status"] == "up"
    down = await make_proxy(RULES, upstream_url="http://127.0.0.1:1")
    async with http.get(down.admin_url + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["upstream"]["status"] == "down"


async def test_stats_and_metrics_count_what_happened(make_proxy: ProxyFactory, upstream: Upstream,
                                                     http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    await fill(http, proxy.proxy_url, "/players/a", "/players/a", "/players/a", "/other")
    async with http.get(proxy.admin_url + "/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 4 and stats["hits"] == 2
    assert stats["routes"]["player"]["outcomes"] == {"miss": 1, "hit": 2}
    assert stats["routes"]["player"]["upstream_calls"] == 1
    assert stats["routes"]["-"]["outcomes"] == {"bypass": 1}
    assert stats["upstream_calls_saved"] == 2
    assert stats["tiers"]["memory"]["entries"] == 1
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'sidecache_requests_total{outcome="hit",route="player"} 2.0' in text
    assert 'sidecache_upstream_requests_total{route="player",status="200"} 1.0' in text
    assert 'sidecache_cache_entries{tier="memory"} 1.0' in text
    assert 'sidecache_request_duration_seconds_count{route="player"} 3.0' in text


async def test_purge_by_url_route_tag_and_all(make_proxy: ProxyFactory, upstream: Upstream,
                                              http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    paths = ("/players/a?x=1&y=2", "/players/b", "/teams/nyy", "/teams/lad")

    async def purge(body: object) -> tuple[int, object]:
        async with http.post(proxy.admin_url + "/purge", json=body) as r:
            return r.status, await r.json()

    await fill(http, proxy.proxy_url, *paths)
    assert await purge({"url": "/players/a?y=2&x=1"}) == (200, {"purged": 1})
    assert (await fill(http, proxy.proxy_url, "/players/b"))[0].startswith("sidecache; hit")
    statuses = await fill(http, proxy.proxy_url, "/players/a?x=1&y=2")
    assert statuses[0].startswith("sidecache; fwd=miss")
    assert await purge({"tag": "player:b"}) == (200, {"purged": 1})
    assert await purge({"route": "team"}) == (200, {"purged": 2})
    assert await purge({"all": True}) == (200, {"purged": 1})
    status, body = await purge({"route": "nope"})
    assert status == 404 and body["error"] == "unknown_route"  # type: ignore[index]
    status, body = await purge({"tag": "x", "all": True})
    assert status == 400
    assert "give exactly one of `url`, `route`, `tag` or `all`" in body["message"]  # type: ignore[index]
    json_type = {"Content-Type": "application/json"}
    async with http.post(proxy.admin_url + "/purge", data=b"{not json", headers=json_type) as r:
        assert r.status == 400 and r.content_type == "application/json"


MUTATING = [("/purge", {"all": True}), ("/warm", {"requests": []}), ("/rules/reload", None)]


async def test_token_guards_every_mutating_call(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, admin_token="s3cret")
    for path, body in MUTATING:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Bearer s3cret2"}, {"Authorization": "Bearer "}):
            async with http.post(proxy.admin_url + path, json=body, headers=headers) as r:
                assert r.status == 401, (path, headers)
                assert await r.json() == {"error": "unauthorized", "status": 401, "message":
                                          "this call needs `Authorization: Bearer <SIDECACHE_ADMIN_TOKEN>`"}
    for method in ("PUT", "DELETE", "PATCH"):  # whatever the method, only reading is free
        async with http.request(method, proxy.admin_url + "/purge") as r:
            assert r.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    async with http.post(proxy.admin_url + "/purge", json={"all": True}, headers=auth) as r:
        assert r.status == 200
    async with http.post(proxy.admin_url + "/warm", json={"requests": []}, headers=auth) as r:
        assert r.status == 200
    async with http.post(proxy.admin_url + "/rules/reload", headers=auth) as r:
        assert r.status == 422  # past the token: this test proxy has no files to reload
    for path in ("/", "/stats", "/stats/history", "/metrics", "/rules", "/healthz", "/readyz"):
        async with http.get(proxy.admin_url + path) as r:
            assert r.status == 200, path


async def test_without_a_token_mutating_calls_are_open_on_loopback(make_proxy: ProxyFactory,
                                                                   http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.post(proxy.admin_url + "/purge", json={"all": True}) as r:
        assert r.status == 200


async def test_rules_endpoint_shows_what_was_written(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.get(proxy.admin_url + "/rules") as r:
        rules = msgspec.json.decode(await r.read())["rules"]
    assert [(x["name"], x["ttl"], x["match"]) for x in rules] == [
        ("player", "5m", "GET /players/{name}"), ("team", "5m", "GET /teams/{team}")
    ]


async def test_pass_through_calls_count_as_upstream_calls_and_save_nothing(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(RULES + '\n[[route]]\nname = "live"\nmatch = "GET /live"\nttl = "0s"\n')
    await fill(http, proxy.proxy_url, "/live", "/live", "/nowhere", "/nowhere")
    async with http.get(proxy.admin_url + "/stats") as r:
        stats = await r.json()
    assert stats["upstream_calls"] == 4 == sum(upstream.hits.values())
    assert stats["upstream_calls_saved"] == 0


async def test_a_cross_site_page_cannot_purge(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """What a web page on another site can send without a preflight: a text/plain or form POST; and what a
    browser says about a fetch it makes from another origin."""
    proxy = await make_proxy(RULES)
    await fill(http, proxy.proxy_url, "/players/a")
    purge = proxy.admin_url + "/purge"
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        async with http.post(purge, data=b'{"all": true}', headers=headers) as r:
            assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type", headers
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        async with http.post(purge, json={"all": True}, headers=headers) as r:
            assert r.status == 403 and (await r.json())["error"] == "cross_site_request", headers
    assert (await fill(http, proxy.proxy_url, "/players/a"))[0].startswith("sidecache; hit")  # nothing was purged
    own = {"Origin": proxy.admin_url, "Sec-Fetch-Site": "same-origin"}  # the admin's own page may
    async with http.post(purge, json={"all": True}, headers=own) as r:
        assert (r.status, await r.json()) == (200, {"purged": 1})


async def test_admin_answers_only_its_own_host_names(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 must not read /stats."""
    proxy = await make_proxy(RULES, config=Config(server=ListenConfig(admin_hosts=["sidecache-admin.internal"])))
    port = proxy.admin_url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        async with http.get(proxy.admin_url + "/stats", headers={"Host": host}) as r:
            assert r.status == 421, host
            assert (await r.json())["error"] == "misdirected_request"
    for host in (f"127.0.0.1:{port}", "localhost:18000", "localhost", "[::1]:9901", "sidecache-admin.internal:9901"):
        async with http.get(proxy.admin_url + "/stats", headers={"Host": host}) as r:
            assert r.status == 200, host


async def test_every_admin_error_is_json(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.get(proxy.admin_url + "/nope") as r:
        assert (r.status, (await r.json())["error"]) == (404, "not_found")
    async with http.get(proxy.admin_url + "/purge") as r:
        assert (r.status, (await r.json())["error"]) == (405, "method_not_allowed")
    async with http.post(proxy.admin_url + "/purge", data=io.BytesIO(b"[" + b"1," * 600_000 + b"1]"),
                         headers={"Content-Type": "application/json"}) as r:
        assert (r.status, (await r.json())["error"]) == (413, "request_entity_too_large")
