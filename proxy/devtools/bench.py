"""`sidecache bench`: the reference workload through the proxy and direct, printed as ratios from one run.

Everything runs on loopback and stops by itself: the sample backend, `sidecache serve`, a bare aiohttp handler
and nginx when installed (processes of their own), and bounded loads (wrk when installed, else proxy.loadgen).
The scenarios are here; the memory rows in devtools/memory_rows.py, the report in devtools/report.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp

from proxy.devtools import chart
from proxy.devtools.demo import PLAYERS, STATS, props, screen
from proxy.devtools.loadgen import burst, host_port, replay, run_load
from proxy.devtools.memory_rows import memory_rows
from proxy.devtools.processes import (
    Backend,
    bare_app,
    child,
    free_port,
    nginx_cache,
    redis_server,
    shipped_rules,
    sidecache_serve,
)
from proxy.devtools.report import Report, ratio_of
from proxy.devtools.sample_data import ROSTER
from proxy.devtools.workloads import prop_burst, zipf_trace

HIT_PATH = "/api/v1/optimized/player-data/Aaron%20Judge?stat_types=hits&stat_types=runs"
BENCH_CONFIG = """
[memory]
max_entries = 200000
max_bytes = "1GiB"
"""


async def _load(url: str, connections: int, seconds: float, think_ms: int = 0) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) for one URL; with `think_ms`, each connection waits that long after an answer
    before asking again (wrk's Lua `delay`), so the load offered is bounded and the same for every server."""
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(f"function delay() return {think_ms} end\n")
            script.flush()
            extra = ["-s", script.name] if think_ms else []
            out = await asyncio.to_thread(
                subprocess.run,
                ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", *extra, url],
                capture_output=True, text=True, timeout=seconds + 30,
            )
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
        return rps, _wrk_ms(out.stdout, "50%"), _wrk_ms(out.stdout, "99%")
    u = urlsplit(url)
    target = u.path + ("?" + u.query if u.query else "")
    r = await run_load(u.hostname or "127.0.0.1", u.port or 80, target, connections=connections, seconds=seconds,
                       think=think_ms / 1000)
    return r.rps, r.percentile(0.5) * 1000, r.percentile(0.99) * 1000


def _wrk_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return math.nan
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def _pct(sorted_lat: list[float], q: float) -> float:
    return sorted_lat[min(len(sorted_lat) - 1, int(q * len(sorted_lat)))] * 1000 if sorted_lat else math.nan


THINK_MS: Final = 2  # the paced hit load: ~23k req/s over 64 connections, below every server's saturation here
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
                await _hits(report, http, upstream, config, seconds)
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


async def _hits(report: Report, http: aiohttp.ClientSession, upstream: str, config: Path, seconds: float) -> None:
    print("hit path: one stored answer, proxy vs a bare aiohttp web.Application answering the same bytes, and "
          "nginx proxy_cache on the same route when installed (runs interleaved, best of 3); 2 workers share a "
          "Redis of the bench's own, as a deployment would run them")
    async with http.get(upstream + HIT_PATH) as r:
        size = len(await r.read())
    slow = config.with_name("slow-lane.toml")
    slow.write_text(config.read_text() + "\n[server]\nfast_lane = false\n")
    runs: dict[tuple[str, int, int], list[tuple[float, float, float]]] = {}
    reps = 3
    with ExitStack() as stack:
        bare = stack.enter_context(bare_app(size))
        one, one_admin = stack.enter_context(sidecache_serve(upstream, config, 1))
        lane_off, _ = stack.enter_context(sidecache_serve(upstream, slow, 1))
        targets = {"bare": bare + "/x", "proxy-1w": one + HIT_PATH, "proxy-1w-no-lane": lane_off + HIT_PATH}
        redis = stack.enter_context(redis_server())
        if redis is not None:
            two, _ = stack.enter_context(sidecache_serve(upstream, config, 2, redis=redis))
            targets["proxy-2w"] = two + HIT_PATH
        else:
            print("  (no redis-server installed: no 2-worker row)")
        nginx = stack.enter_context(nginx_cache(upstream, 2))
        if nginx is not None:
            targets["nginx-2w"] = nginx + HIT_PATH
        else:
            print("  (no nginx installed: no nginx row; Debian's nginx-light has proxy_cache)")
        for url in targets.values():
            for _ in range(8):  # every worker holds its own copy after a few requests
                async with http.get(url) as r:
                    await r.read()
        lane_before = await _fast_lane_hits(http, one_admin)
        paced = {n: u for n, u in targets.items() if n in ("proxy-2w", "nginx-2w")}
        for conns, think, load in ((64, 0, targets), (256, 0, targets), (64, THINK_MS, paced)):
            for _ in range(reps):  # interleaved, so a slow spell of a shared machine falls on every server alike
                for name, url in load.items():
                    runs.setdefault((name, conns, think), []).append(await _load(url, conns, seconds, think))
        lane_share = await _lane_share(http, one_admin, lane_before)
    report.raw["hits"] = {f"{k[0]}@{k[1]}": max(v) for k, v in runs.items() if not k[2]}
    report.raw["hits_runs"] = {f"{k[0]}@{k[1]}" + (f"+{k[2]}ms" if k[2] else ""): v for k, v in runs.items()}
    report.raw["hits_fast_lane_share"] = lane_share
    for conns in (64, 256):
        best = {name: max(runs[(name, conns, 0)]) for name in targets}  # req/s: best of three, noise only ever slows
        tail = {name: _median([r[2] for r in runs[(name, conns, 0)]]) for name in targets}  # p99: the middle run's
        mid = {name: _median([r[1] for r in runs[(name, conns, 0)]]) for name in targets}
        report.add(f"hit req/s, {conns} conns", " | ".join(f"{n} {v[0]:.0f}" for n, v in best.items()))
        text, ratio = ratio_of(best["proxy-1w"][0] / best["bare"][0])
        report.add(f"  proxy 1w / bare ({conns} conns)", text, ">= 2.00x", ratio / 2.0)
        text, _ = ratio_of(best["proxy-1w-no-lane"][0] / best["bare"][0])
        report.add(f"  proxy 1w, fast lane off / bare ({conns} conns)", text)
        if "proxy-2w" in best:
            text, ratio = ratio_of(best["proxy-2w"][0] / best["proxy-1w"][0])
            report.add(f"  proxy 2w / proxy 1w ({conns} conns)", text)
        if "proxy-2w" in best and "nginx-2w" in best:
            text, ratio = ratio_of(best["proxy-2w"][0] / best["nginx-2w"][0])
            report.add(f"  proxy 2w / nginx 2w ({conns} conns)", text, ">= 1.00x", ratio)
            report.add(f"  p99 ms, median of {reps}: proxy 2w | nginx 2w ({conns} conns)",
                       f"{_spread(runs[('proxy-2w', conns, 0)])} | {_spread(runs[('nginx-2w', conns, 0)])}",
                       "<= nginx's", tail["nginx-2w"] / tail["proxy-2w"])
        report.add(f"  p50 / p99 ms, median of {reps}: bare | proxy 1w ({conns} conns)",
                   f"{mid['bare']:.2f}/{tail['bare']:.2f} | {mid['proxy-1w']:.2f}/{tail['proxy-1w']:.2f}")
    if len(paced) == 2:
        p2, ng = runs[("proxy-2w", 64, THINK_MS)], runs[("nginx-2w", 64, THINK_MS)]
        report.add(f"hit p99 at the same offered load: 64 conns, each waiting {THINK_MS} ms between requests",
                   f"proxy-2w {_median([r[0] for r in p2]):.0f} | nginx-2w {_median([r[0] for r in ng]):.0f} req/s")
        report.add(f"  p99 ms, median of {reps}: proxy 2w | nginx 2w (paced)", f"{_spread(p2)} | {_spread(ng)}",
                   "<= nginx's", _median([r[2] for r in ng]) / _median([r[2] for r in p2]))
    report.add("  hits answered by the fast lane (proxy 1w, every load)", f"{lane_share:.1%}")


def _spread(runs: list[tuple[float, float, float]]) -> str:
    """The runs' p99: median (min-max)."""
    p99 = sorted(r[2] for r in runs)
    return f"{_median(p99):.2f} ({p99[0]:.2f}-{p99[-1]:.2f})"


async def _fast_lane_hits(http: aiohttp.ClientSession, admin: str) -> tuple[float, float]:
    """(fast-lane hits, all hits) so far, from the proxy's own /metrics."""
    async with http.get(admin + "/metrics") as r:
        text = await r.text()
    lane = sum(float(m.group(1)) for m in re.finditer(r"^sidecache_fast_lane_hits_total(?:{[^}]*})? ([\d.e+]+)$",
                                                       text, re.M))
    hits = sum(float(m.group(1)) for m in re.finditer(
        r'^sidecache_requests_total{[^}]*outcome="hit"[^}]*} ([\d.e+]+)$', text, re.M))
    return lane, hits


async def _lane_share(http: aiohttp.ClientSession, admin: str, before: tuple[float, float]) -> float:
    lane, hits = await _fast_lane_hits(http, admin)
    return (lane - before[0]) / max(hits - before[1], 1.0)


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
    wall = _median(walls)
    report.raw["coalescing"] = {"upstream_calls": calls, "wall_ms": wall * 1000, "walls_ms": [w * 1000 for w in walls],
                                "direct_walls_ms": [w * 1000 for w in direct]}
    report.add("  upstream calls for 200 identical requests (worst)", str(calls), "== 1",
               1.0 if calls == 1 else 1 / max(calls, 2))
    limit = latency * 1000 + 15
    report.add("  wall time (median; min-max)", f"{wall * 1000:.1f} ms ({min(walls) * 1000:.0f}-"
               f"{max(walls) * 1000:.0f})", f"<= {limit:.0f} ms", limit / (wall * 1000))
    report.add("  wall time direct, 200 backend calls (median)", f"{_median(direct) * 1000:.1f} ms")


async def _trace(report: Report, http: aiohttp.ClientSession, backend: Backend, proxy: str, admin: str,
                 upstream: str, latency: float, quick: bool) -> None:
    trace = zipf_trace(n=1000 if quick else 5000)
    distinct = len(set(trace))
    async with http.post(admin + "/purge", json={"all": True}) as r:
        assert r.status == 200, await r.text()
    print(f"reference trace: {len(trace)} GETs, 200 players, Zipf(1.1), 4 routes, concurrency 50")
    before = await backend.calls()
    lane_before = await _fast_lane_hits(http, admin)
    t0 = time.perf_counter()
    lat = sorted(await replay(*host_port(proxy), trace, 50))
    wall = time.perf_counter() - t0
    calls = await backend.calls() - before
    lane_share = await _lane_share(http, admin, lane_before)
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


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


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
    p, d = _median(pw) * 1000, _median(dw) * 1000
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
        p, d = _median(pw) * 1000, _median(dw) * 1000
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
    added = _median([p - d for p, d in zip(pw, dw, strict=True)]) * 1000
    report.add("  later screens: backend calls (worst)", f"{max(calls)} vs {n}", f"<= {n} (+1 per cool-down)",
               (n + 1) / max(max(calls), 1))
    report.add("  later screens: added wall (median)", f"{added:+.1f} ms ({_median(pw) * 1000:.0f} / "
               f"{_median(dw) * 1000:.0f} ms)", "<= direct + 10 ms", 10 / max(added, 0.1))
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
