"""GET / on the admin listener: the live dashboard, opened in headless Chromium, shows what /stats says."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import aiohttp

from proxy.config.settings import Config, ListenConfig
from tests.support.browser import Page, chromium
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"

[[route]]
name = "team"
match = "GET /teams/{team}"
ttl = "5m"
"""


def to_fixed(x: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the exact double, halves rounded up (Python's format rounds to even)."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def pct(ratio: float) -> str:
    return to_fixed(ratio * 100, 1) + "%"


def ms(value: float) -> str:
    return to_fixed(value, 1) + " ms"


async def traffic(http: aiohttp.ClientSession, base: str) -> None:
    for path in ["/players/a", "/players/b", "/teams/nyy"] * 3 + ["/players/a", "/players/c"]:
        async with http.get(base + path) as r:
            await r.read()


async def test_dashboard_numbers_match_stats(make_proxy: ProxyFactory, upstream: Upstream,
                                            http: aiohttp.ClientSession, tmp_path: Path) -> None:
    upstream.reply("/players/b", delay=0.03)  # some spread between the percentiles
    proxy = await make_proxy(RULES)
    await traffic(http, proxy.proxy_url)
    async with http.get(proxy.admin_url + "/stats") as r:
        stats = await r.json()
    # virtual time lets the page's first /stats poll finish before the DOM is written out
    dom = await chromium(tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom", proxy.admin_url + "/")
    page = Page(dom.decode())
    assert page.body.get("data-loaded") == "true", "the page never drew a /stats answer"
    top = page.stats[""]
    assert top["requests"] == f"{stats['requests']:,}" == "11"
    assert top["hit_ratio"] == pct(stats["hit_ratio"])
    assert top["upstream_calls"] == f"{stats['upstream_calls']:,}" == "4"
    assert top["upstream_calls_saved"] == f"{stats['upstream_calls_saved']:,}"
    assert top["fast_lane"] == pct(stats["fast_lane"]["share_of_hits"]) == "100.0%"  # every hit: all in one piece
    assert top["grade"] == stats["grade"].replace("_", " ")
    for p in ("p50_ms", "p95_ms", "p99_ms"):
        assert top[f"latency.{p}"] == ms(stats["latency"][p])
    assert top["workers"] == "1 worker"
    for name, route in stats["routes"].items():
        row = page.stats[name]
        assert row["requests"] == f"{route['requests']:,}"
        assert row["hit_ratio"] == pct(route["hit_ratio"])
        assert row["upstream_calls"] == f"{route['upstream_calls']:,}"
        for outcome in ("hit", "miss", "collapsed", "bypass", "error"):
            assert row[f"outcomes.{outcome}"] == f"{route['outcomes'].get(outcome, 0):,}"
        for p in ("p50_ms", "p95_ms", "p99_ms"):
            assert row[p] == ms(route[p])
    assert page.stats["player"]["outcomes.hit"] == "5" and page.stats["team"]["outcomes.miss"] == "1"
    memory = stats["tiers"]["memory"]
    assert page.stats["memory"]["entries"] == f"{memory['entries']:,} of {memory['max_entries']:,}" == "4 of 500"


async def test_dashboard_is_one_self_contained_file(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.get(proxy.admin_url + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        html = await r.text()
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    # the only absolute URL is the SVG namespace name, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'`)]+", html)) == {"http://www.w3.org/2000/svg"}
    async with http.get(proxy.admin_url + "/stats/history") as r:
        history = await r.json()
    assert history["interval_s"] == 1.0 and history["samples"][0][1:4] == [0, 0, 0]


async def test_a_proxy_without_traffic_says_so_instead_of_grading_it(make_proxy: ProxyFactory,
                                                                   http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    proxy = await make_proxy(RULES)
    async with http.get(proxy.admin_url + "/stats") as r:
        assert (await r.json())["grade"] == "no_traffic"
    dom = await chromium(tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom", proxy.admin_url + "/")
    page = Page(dom.decode())
    assert page.body.get("data-loaded") == "true"
    assert page.stats[""]["grade"] == "no traffic yet"


async def test_the_fast_lane_tile_says_off_when_it_is(make_proxy: ProxyFactory, upstream: Upstream,
                                                      http: aiohttp.ClientSession, tmp_path: Path) -> None:
    proxy = await make_proxy(RULES, config=Config(server=ListenConfig(fast_lane=False)))
    await traffic(http, proxy.proxy_url)
    dom = await chromium(tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom", proxy.admin_url + "/")
    page = Page(dom.decode())
    assert page.body.get("data-loaded") == "true"
    assert page.stats[""]["fast_lane"] == "off" and page.stats[""]["requests"] == "11"
