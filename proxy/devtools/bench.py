"""`sidecache bench`: the reference workload through the proxy and direct, printed as ratios from one run.

Everything runs on loopback and stops by itself: the sample backend, `sidecache serve`, a bare aiohttp handler
and nginx when installed (processes of their own), and bounded loads (wrk when installed, else proxy.loadgen).
The scenarios are here; the hit rows in devtools/hit_rows.py, the memory rows in devtools/memory_rows.py, the
report in devtools/report.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp

from proxy.devtools import chart
from proxy.devtools.demo import PLAYERS, STATS, props, screen
from proxy.devtools.hit_rows import fast_lane_hits, fast_lane_share, hit_rows
from proxy.devtools.loadgen import burst, host_port, replay
from proxy.devtools.memory_rows import memory_rows
from proxy.devtools.processes import (
    Backend,
    child,
    free_port,
    shipped_rules,
    sidecache_serve,
)
from proxy.devtools.report import Report, median, ratio_of
from proxy.devtools.sample_data import ROSTER
from proxy.devtools.workloads import prop_burst, zipf_trace

BENCH_CONFIG = """
[memory]
max_entries = 200000
max_bytes = "1GiB"
"""


def _pct(sorted_lat: list[float], q: float) -> float:
    return sorted_lat[min(len(sorted_lat) - 1, int(q * len(sorted_lat)))] * 1000 if sorted_lat else math.nan


BROWSER_ENCODINGS: Final = "gzip, deflate, br, zstd"  # what Chromium sends

SCENARIOS = ("hits", "coalescing", "trace", "props", "screens", "failing", "memory")


async def run_bench(*, quick: bool = False, json_path: Path | None = None, latency: float = 0.05,
                    png_path: Path | None = None, batch_extra: float = 0.05,
                    only: tuple[str, ...] = SCENARIOS) -> int:
    seconds = 2.0 if quick else 5.0
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "proxy.devtools.sample_backend", "--port", str(port), "--latency", str(latency)]
    with child(cmd, upstream + "/health"):
        return await _run(upstream, quick, json_path, png_path, latency, seconds, batch_extra, only)


async def _run(upstream: str, quick: bool, json_path: Path | None, png_path: Path | None, latency: float,
               seconds: float, batch_extra: float = 0.05, only: tuple[str, ...] = SCENARIOS) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="sidecache-bench-"))
    config = tmp / "bench.toml"
    config.write_text(BENCH_CONFIG)
    report = Report(time.strftime("%Y-%m-%d %H:%M:%S %Z"), "wrk -t2" if shutil.which("wrk") else "proxy.loadgen",
                    latency * 1000, BENCH_CONFIG.strip())
    print(f"sidecache bench, {report.started}; load generator: {report.load_generator}; "
          f"upstream latency {latency * 1000:.0f} ms; {os.cpu_count()} cores\nproxy config used:\n{BENCH_CONFIG}")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            backend = Backend(upstream, http)
            if "hits" in only:
                await hit_rows(report, http, upstream, config, seconds)
            with sidecache_serve(upstream, config, 1) as (proxy, admin):
                if "coalescing" in only:
                    await _coalescing(report, http, backend, proxy, upstream, latency)
                if "trace" in only:
                    await _trace(report, http, backend, proxy, admin, upstream, latency, quick)
                if "props" in only:
                    await _props(report, http, backend, proxy, upstream, quick)
                if "screens" in only:
                    await _screens(report, http, backend, proxy, admin, upstream, latency, batch_extra, quick)
            if "failing" in only:
                await _failing(report, http, backend, upstream, config, tmp, latency, quick)
            if "memory" in only:
                await memory_rows(report, http, tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if json_path:
        json_path.write_text(json.dumps(asdict(report), indent=2))
        print(f"\nwritten to {json_path}")
    if png_path:
        print(chart.write_png(chart.svg(report.started, [(r.name.strip(), r.value, r.target, r.score)
                                                        for r in report.rows if r.score is not None]), png_path))
    return 0


async def _coalescing(report: Report, http: aiohttp.ClientSession, backend: Backend, proxy: str, upstream: str,
                      latency: float) -> None:
    reps = 5
    print(f"coalescing: 200 concurrent identical cold requests (connections opened first, raw sockets); "
          f"median of {reps} bursts, each on a key of its own, proxy and direct (200 backend calls) in turn")
    walls, direct, calls = [], [], 0
    for name in ROSTER[50:50 + reps]:
        paths = [f"/api/v1/players/{quote(name)}/id"] * 200
        before = await backend.calls()
        walls.append(max(await burst(*host_port(proxy), paths)))
        calls = max(calls, await backend.calls() - before)
        direct.append(max(await burst(*host_port(upstream), paths)))
    wall = median(walls)
    report.raw["coalescing"] = {"upstream_calls": calls, "wall_ms": wall * 1000, "walls_ms": [w * 1000 for w in walls],
                                "direct_walls_ms": [w * 1000 for w in direct]}
    report.add("  upstream calls for 200 identical requests (worst)", str(calls), "== 1",
               1.0 if calls == 1 else 1 / max(calls, 2))
    limit = latency * 1000 + 15
    report.add("  wall time (median; min-max)", f"{wall * 1000:.1f} ms ({min(walls) * 1000:.0f}-"
               f"{max(walls) * 1000:.0f})", f"<= {limit:.0f} ms", limit / (wall * 1000))
    report.add("  wall time direct, 200 backend calls (median)", f"{median(direct) * 1000:.1f} ms")


async def _trace(report: Report, http: aiohttp.ClientSession, backend: Backend, proxy: str, admin: str,
                 upstream: str, latency: float, quick: bool) -> None:
    trace = zipf_trace(n=1000 if quick else 5000)
    distinct = len(set(trace))
    async with http.post(admin + "/purge", json={"all": True}) as r:
        assert r.status == 200, await r.text()
    print(f"reference trace: {len(trace)} GETs, 200 players, Zipf(1.1), 4 routes, concurrency 50")
    before = await backend.calls()
    lane_before = await fast_lane_hits(http, admin)
    t0 = time.perf_counter()
    lat = sorted(await replay(*host_port(proxy), trace, 50))
    wall = time.perf_counter() - t0
    calls = await backend.calls() - before
    lane_share = await fast_lane_share(http, admin, lane_before)
    t0 = time.perf_counter()
    dlat = sorted(await replay(*host_port(upstream), trace, 50))
    dwall = time.perf_counter() - t0
    report.raw["trace"] = {"requests": len(trace), "distinct": distinct, "upstream_calls": calls,
                           "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "wall_s": wall,
                           "direct_p50_ms": _pct(dlat, 0.5), "direct_p99_ms": _pct(dlat, 0.99), "direct_wall_s": dwall,
                           "fast_lane_share_of_hits": lane_share}
    report.add("  upstream calls vs distinct keys", f"{calls} vs {distinct}", "equal",
               1.0 if calls == distinct else min(calls, distinct) / max(calls, distinct, 1) * 0.99)
    report.add("  hit ratio", f"{1 - calls / len(trace):.1%}")
    report.add("  hits answered by the fast lane", f"{lane_share:.1%}", ">= 90%", lane_share / 0.9)
    p99_limit = 1.2 * latency * 1000
    report.add("  p50 / p99 via proxy", f"{_pct(lat, 0.5):.1f} / {_pct(lat, 0.99):.1f} ms",
               f"p99 <= {p99_limit:.0f} ms", p99_limit / _pct(lat, 0.99))
    report.add("  p50 / p99 direct", f"{_pct(dlat, 0.5):.1f} / {_pct(dlat, 0.99):.1f} ms")
    report.add("  wall time proxy / direct", f"{wall:.2f} s / {dwall:.2f} s = {ratio_of(wall / dwall)[0]}")


async def _props(report: Report, http: aiohttp.ClientSession, backend: Backend, proxy: str, upstream: str,
                 quick: bool) -> None:
    n, players = (300, 25) if quick else (1000, 25)
    paths = prop_burst(n, players)
    print(f"prop burst: {n} per-prop analyses over {players} players, sent at once (connections opened first)")
    before = await backend.calls()
    lat = sorted(await burst(*host_port(proxy), paths))
    calls = await backend.calls() - before
    dbefore = await backend.calls()
    dlat = sorted(await burst(*host_port(upstream), paths))
    dcalls = await backend.calls() - dbefore
    per_player = math.ceil(n / players)
    limit = players * math.ceil(per_player / 50)
    added = _pct(lat, 0.5) - _pct(dlat, 0.5)
    report.raw["props"] = {"upstream_calls": calls, "direct_calls": dcalls, "p50_ms": _pct(lat, 0.5),
                           "p99_ms": _pct(lat, 0.99), "direct_p50_ms": _pct(dlat, 0.5)}
    report.add("  upstream calls: proxy vs direct", f"{calls} vs {dcalls}", f"<= {limit}", limit / max(calls, 1))
    report.add("  p50 / p99 via proxy", f"{_pct(lat, 0.5):.1f} / {_pct(lat, 0.99):.1f} ms")
    report.add("  added p50 over direct", f"{added:.1f} ms", "<= window + 10 ms (210 ms)", 210 / max(added, 1.0))


async def _purge(http: aiohttp.ClientSession, admin: str) -> None:
    async with http.post(admin + "/purge", json={"all": True}) as r:
        assert r.status == 200, await r.text()


async def _cold_screen(http: aiohttp.ClientSession, backend: Backend, admin: str, proxy: str, upstream: str,
                       reps: int, connections: int | None, tag: str) -> tuple[list[float], list[float], list[int]]:
    """Cold 60-prop screens, proxied (purged first) and direct in turn: walls (s) of each, and proxied calls.

    `connections` None sends every prop at once over its own connection (a `Promise.all` in Node); a number
    sends them in screen order over that many keep-alive connections, each taking the next when free (a browser)."""
    walls: dict[str, list[float]] = {"proxy": [], "direct": []}
    calls: list[int] = []
    for rep in range(reps):
        paths = props(f"{tag}{rep}")
        for side, base in (("proxy", proxy), ("direct", upstream)):
            if side == "proxy":
                await _purge(http, admin)
            before = await backend.calls()
            if connections is None:
                wall = max(await burst(*host_port(base), paths))
            else:
                t0 = time.perf_counter()
                await replay(*host_port(base), paths, connections)
                wall = time.perf_counter() - t0
            walls[side].append(wall)
            if side == "proxy":
                calls.append(await backend.calls() - before)
    return walls["proxy"], walls["direct"], calls


async def _screens(report: Report, http: aiohttp.ClientSession, backend: Backend, proxy: str, admin: str,
                   upstream: str, latency: float, batch_extra: float, quick: bool) -> None:
    reps = 3 if quick else 7
    n, players = len(props(0)), len(PLAYERS)
    print(f"cold screen: {n} props over {players} players ({len(STATS)} each), purged before every proxied run; "
          f"median of {reps} runs, proxy and direct in turn")
    raw: dict[str, object] = {}
    pw, dw, calls = await _cold_screen(http, backend, admin, proxy, upstream, reps, None, "all")
    p, d = median(pw) * 1000, median(dw) * 1000
    raw["all_at_once"] = {"proxy_ms": [w * 1000 for w in pw], "direct_ms": [w * 1000 for w in dw], "calls": calls}
    report.add("  all at once: wall proxy / direct", f"{p:.1f} / {d:.1f} ms (+{p - d:.1f} ms)",
               "<= direct + 15 ms", (d + 15) / p)
    worst = max(calls) / players
    report.add("  all at once: backend calls per player (worst run)", f"{worst:.1f} ({max(calls)} calls vs {n})",
               "<= 2", 2 / max(worst, 0.1))
    rounds = math.ceil(n / 6)
    for extra in dict.fromkeys((0.0, batch_extra)):
        await backend.knobs(batch_latency=latency + extra)
        try:
            pw, dw, calls = await _cold_screen(http, backend, admin, proxy, upstream, reps, 6, f"b{extra}-")
        finally:
            await backend.knobs(batch_latency=latency)
        p, d = median(pw) * 1000, median(dw) * 1000
        raw[f"browser_extra_{extra * 1000:.0f}ms"] = {"proxy_ms": [w * 1000 for w in pw],
                                                     "direct_ms": [w * 1000 for w in dw], "calls": calls}
        limit = 1.05 * d + rounds * extra * 1000
        label = f"6 conns, batch +{extra * 1000:.0f} ms"
        target = "<= 1.05x direct" + (f" + {rounds} x {extra * 1000:.0f} ms" if extra else "")
        report.add(f"  {label}: wall proxy / direct", f"{p:.0f} / {d:.0f} ms = {p / d:.2f}x", target, limit / p)
        report.add(f"  {label}: backend calls (worst run)", f"{max(calls)} vs {n}", f"<= {n // 2}",
                   (n // 2) / max(max(calls), 1))
    raw["wire_bytes"] = await _wire_bytes(report, proxy, upstream)
    report.raw["screens"] = raw


async def _wire_bytes(report: Report, proxy: str, upstream: str) -> dict[str, int]:
    """Body bytes a browser reads for a whole screen (its props and player panels), with gzip accepted: straight
    from the backend (which gzips bodies of 1,000 bytes and more) and from the proxy's warm entries."""
    paths = screen("wire")
    sent = {}
    async with aiohttp.ClientSession(auto_decompress=False) as raw_http:  # the bytes as they crossed the wire
        for _ in range(2):  # the first pass through the proxy fills it; the second is what is measured
            for side, base in (("proxy", proxy), ("direct", upstream)):
                total = 0
                for path in paths:
                    async with raw_http.get(base + path, headers={"Accept-Encoding": BROWSER_ENCODINGS}) as r:
                        total += len(await r.read())
                sent[side] = total
    report.add(f"  bytes on the wire, gzip accepted: a warm screen ({len(paths)} answers), proxy / direct",
               f"{sent['proxy'] / 1024:.1f} / {sent['direct'] / 1024:.1f} KiB = {sent['proxy'] / sent['direct']:.2f}x",
               "<= 1.05x direct", 1.05 * sent["direct"] / sent["proxy"])
    return sent


async def _failing(report: Report, http: aiohttp.ClientSession, backend: Backend, upstream: str, config: Path,
                   tmp: Path, latency: float, quick: bool) -> None:
    """A batch endpoint that fails every prop (the real one does without its own cache): batching must stop."""
    cool_down, reps = 3.0, 3 if quick else 5
    rules = tmp / "rules.toml"
    rules.write_text(_with_cool_down(shipped_rules().read_text(), f"{cool_down:g}s"))
    n = len(props(0))
    print(f"batch always fails: cold {n}-prop screens sent at once, proxy and direct in turn; a fresh proxy with "
          f"the shipped rules but cool_down = \"{cool_down:g}s\", so the run sees a probe; later screens: median "
          f"of {reps}")
    await backend.knobs(batch_fails_all=True)
    try:
        with sidecache_serve(upstream, config, 1, rules) as (proxy, admin):
            first = await _cold_screen(http, backend, admin, proxy, upstream, 1, None, "f0-")
            later = await _cold_screen(http, backend, admin, proxy, upstream, reps, None, "f1-")
            await asyncio.sleep(cool_down * 1.2)
            probe = await _cold_screen(http, backend, admin, proxy, upstream, 1, None, "f2-")
            async with http.get(admin + "/stats") as r:
                route = (await r.json())["routes"].get("prop-analysis", {})
    finally:
        await backend.knobs(batch_fails_all=False)
    breaker = {k: route.get(k) for k in ("batch_breaker", "batch_breaker_opened")}
    raw: dict[str, object] = {name: {"proxy_ms": [w * 1000 for w in pw], "direct_ms": [w * 1000 for w in dw],
                                     "calls": calls}
                              for name, (pw, dw, calls) in (("first", first), ("later", later), ("probe", probe))}
    raw["breaker"] = breaker
    report.raw["failing"] = raw
    (pw, dw, calls) = first
    report.add("  first screen: calls | wall proxy / direct", f"{calls[0]} vs {n} | {pw[0] * 1000:.0f} / "
               f"{dw[0] * 1000:.0f} ms")
    (pw, dw, calls) = later
    added = median([p - d for p, d in zip(pw, dw, strict=True)]) * 1000
    report.add("  later screens: backend calls (worst)", f"{max(calls)} vs {n}", f"<= {n} (+1 per cool-down)",
               (n + 1) / max(max(calls), 1))
    report.add("  later screens: added wall (median)", f"{added:+.1f} ms ({median(pw) * 1000:.0f} / "
               f"{median(dw) * 1000:.0f} ms)", "<= direct + 10 ms", 10 / max(added, 0.1))
    (pw, dw, calls) = probe
    added = (pw[0] - dw[0]) * 1000
    report.add("  after the cool-down (probe): calls | added wall", f"{calls[0]} vs {n} | {added:+.1f} ms",
               f"<= {n + 1} calls", (n + 1) / max(calls[0], 1))
    report.add("  breaker in /stats", json.dumps(breaker))


def _with_cool_down(text: str, value: str) -> str:
    """The rules with every batch table's cool_down set to value."""
    text, n = re.subn(r'^(\s*cool_down\s*=\s*)"[^"]*"', rf'\g<1>"{value}"', text, flags=re.M)
    if n == 0:
        text = re.sub(r"^(\s*)\[route\.batch\]\s*$", rf'\g<0>\n\g<1>cool_down = "{value}"', text, flags=re.M)
    return text
