"""`sidecache demo`: the sample A1Betting backend, the proxy in front, a burst of realistic traffic, the numbers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from proxy.app import Sidecar
from proxy.config.rules import RuleSet
from proxy.config.settings import Config, apply_overrides
from proxy.devtools.sample_backend import SampleBackend
from proxy.devtools.sample_data import ROSTER, player_id, player_team
from proxy.policy.cache_status import CacheStatus

LATENCY = 0.05
PLAYERS = ROSTER[:10]
STATS = (("hits", 0.5), ("hits", 1.5), ("runs", 0.5), ("home_runs", 0.5), ("rbi", 1.5), ("walks", 0.5))


def props(user: int | str) -> list[str]:
    """One user's prop analyses: 6 props for each of 10 players, player by player, as the screen asks for them."""
    paths = []
    for n, (name, (stat, line)) in enumerate(itertools.product(PLAYERS, STATS)):
        team = player_team(name) or "NYY"
        q = urlencode({"player_name": name, "stat_type": stat, "line": line, "team": team,
                       "matchup": f"{team} vs BOS"})
        paths.append(f"/mlb/enhanced-prop-analysis/u{user}-p{n}?{q}")
    return paths


def screen(user: int | str) -> list[str]:
    """What one user's prop screen asks for: every prop of every player, plus the player panels."""
    paths = props(user)
    for name in PLAYERS:
        pid = player_id(name)
        paths += [
            f"/api/v1/optimized/player-data/{quote(name)}?stat_types=hits&stat_types=runs",
            f"/api/v1/players/{quote(name)}/id",
            f"/api/v1/players/{pid}/game-logs",
            f"/api/v1/players/{pid}/season-stats?stat_type=hits",
        ]
    return paths


async def _user(base: str, paths: list[str], lat: list[float], outcomes: Counter[str]) -> None:
    """One browser: at most 6 connections to a host, as HTTP/1.1 browsers do."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=6)) as http:
        await asyncio.gather(*(_one(http, base + p, lat, outcomes) for p in paths))


async def _one(http: aiohttp.ClientSession, url: str, lat: list[float], outcomes: Counter[str]) -> None:
    t0 = time.perf_counter()
    async with http.get(url) as r:
        await r.read()
        status = r.headers.get("Cache-Status", "")
    lat.append(time.perf_counter() - t0)
    outcomes[_outcome(status)] += 1


def _outcome(cache_status: str) -> str:
    cs = CacheStatus.parse(cache_status)
    return "other" if cs is None else cs.outcome


async def run_demo(config: Config, rules: RuleSet, users: int = 3) -> int:
    backend = SampleBackend(latency=LATENCY)
    runner = web.AppRunner(backend.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    cfg = apply_overrides(config, upstream=f"http://{host}:{port}", listen="127.0.0.1:0", admin="127.0.0.1:0",
                          redis="", env={})
    try:
        async with Sidecar(cfg, rules) as proxy:
            print(f"sample backend on http://{host}:{port} ({LATENCY * 1000:.0f} ms a call); sidecache on "
                  f"{proxy.proxy_url} (admin {proxy.admin_url}), {len(rules.rules)} rules, memory tier only\n")
            lat: list[float] = []
            outcomes: Counter[str] = Counter()
            wall = 0.0
            sent = direct_calls = 0
            direct_by_route: Counter[str] = Counter()
            for wave, first_user in enumerate((0, users), 1):
                screens = [screen(u) for u in range(first_user, first_user + users)]
                before = sum(backend.calls.values())  # the same wave straight to the backend first, for comparison
                seen = Counter(backend.calls)
                d0 = time.perf_counter()
                await asyncio.gather(*(_user(f"http://{host}:{port}", s, [], Counter()) for s in screens))
                direct = time.perf_counter() - d0
                direct_calls += sum(backend.calls.values()) - before
                direct_by_route.update(backend.calls - seen)
                before = sum(backend.calls.values())
                w0 = time.perf_counter()
                await asyncio.gather(*(_user(proxy.proxy_url, s, lat, outcomes) for s in screens))
                took = time.perf_counter() - w0
                wall += took
                n = sum(map(len, screens))
                sent += n
                print(f"wave {wave}: {users} users open the prop screen at once, {n} requests -> "
                      f"{sum(backend.calls.values()) - before} backend calls in {took:.2f} s "
                      f"(straight to the backend: {n} calls in {direct:.2f} s)")
            calls = sum(backend.calls.values()) - direct_calls
            served = sum(n for o, n in outcomes.items() if o in ("hit", "collapsed", "batched", "stale"))
            print()
            print(f"requests through the proxy   {sent}")
            print(f"backend calls                {calls}   (without the proxy: {sent})")
            print(f"hit ratio                    {served / sent:.1%}   ({_fmt(outcomes)})")
            lat.sort()
            p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
            print(f"latency p50 / p99            {p50 * 1000:.1f} ms / {p99 * 1000:.1f} ms"
                  f"   (one backend call: {LATENCY * 1000:.0f} ms)")
            print(f"wall time                    {wall:.2f} s through the proxy")
            proxied = backend.calls - direct_by_route
            print(f"backend calls by route       {dict(sorted(proxied.items()))}")
            m = proxy.metrics
            if batches := sum(m.batches.values()):
                items = sum(h.sum for h in m.batch_items.values())
                print(f"batching                     {outcomes['batched']} prop requests answered by {batches} batch "
                      f"calls ({items / batches:.1f} items a call), {sum(m.batch_fallbacks.values())} sent alone")
        print("\nthe demo's proxy has stopped; for live numbers, put sidecache in front of your own backend "
              "(README, \"In front of your backend\") and open its dashboard")
    finally:
        await runner.cleanup()
    return 0


def _fmt(outcomes: Counter[str]) -> str:
    return ", ".join(f"{n} {o}" for o, n in outcomes.most_common())
