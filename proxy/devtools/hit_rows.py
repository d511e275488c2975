"""`sidecache bench`'s hit rows: one stored answer under wrk (or proxy.loadgen), the proxy with one and two
workers against a bare aiohttp app answering the same bytes and nginx's `proxy_cache` on the same route."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from proxy.devtools.loadgen import run_load
from proxy.devtools.processes import bare_app, nginx_cache, redis_server, sidecache_serve
from proxy.devtools.report import Report, median, ratio_of

HIT_PATH = "/api/v1/optimized/player-data/Aaron%20Judge?stat_types=hits&stat_types=runs"
THINK_MS: Final = 2  # the paced hit load: ~23k req/s over 64 connections, below every server's saturation here


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


async def hit_rows(report: Report, http: aiohttp.ClientSession, upstream: str, config: Path, seconds: float) -> None:
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
        lane_before = await fast_lane_hits(http, one_admin)
        paced = {n: u for n, u in targets.items() if n in ("proxy-2w", "nginx-2w")}
        for conns, think, load in ((64, 0, targets), (256, 0, targets), (64, THINK_MS, paced)):
            for _ in range(reps):  # interleaved, so a slow spell of a shared machine falls on every server alike
                for name, url in load.items():
                    runs.setdefault((name, conns, think), []).append(await _load(url, conns, seconds, think))
        lane_share = await fast_lane_share(http, one_admin, lane_before)
    report.raw["hits"] = {f"{k[0]}@{k[1]}": max(v) for k, v in runs.items() if not k[2]}
    report.raw["hits_runs"] = {f"{k[0]}@{k[1]}" + (f"+{k[2]}ms" if k[2] else ""): v for k, v in runs.items()}
    report.raw["hits_fast_lane_share"] = lane_share
    for conns in (64, 256):
        best = {name: max(runs[(name, conns, 0)]) for name in targets}  # req/s: best of three, noise only ever slows
        tail = {name: median([r[2] for r in runs[(name, conns, 0)]]) for name in targets}  # p99: the middle run's
        mid = {name: median([r[1] for r in runs[(name, conns, 0)]]) for name in targets}
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
        if "nginx-2w" in best:  # one worker leaves wrk a core: 3 busy threads on 2 cores, not 4
            report.add(f"  p99 ms, median of {reps}: proxy 1w | nginx 2w ({conns} conns)",
                       f"{_spread(runs[('proxy-1w', conns, 0)])} | {_spread(runs[('nginx-2w', conns, 0)])}")
        report.add(f"  p50 / p99 ms, median of {reps}: bare | proxy 1w ({conns} conns)",
                   f"{mid['bare']:.2f}/{tail['bare']:.2f} | {mid['proxy-1w']:.2f}/{tail['proxy-1w']:.2f}")
    if len(paced) == 2:
        p2, ng = runs[("proxy-2w", 64, THINK_MS)], runs[("nginx-2w", 64, THINK_MS)]
        report.add(f"hit p99 at the same offered load: 64 conns, each waiting {THINK_MS} ms between requests",
                   f"proxy-2w {median([r[0] for r in p2]):.0f} | nginx-2w {median([r[0] for r in ng]):.0f} req/s")
        report.add(f"  p99 ms, median of {reps}: proxy 2w | nginx 2w (paced)", f"{_spread(p2)} | {_spread(ng)}",
                   "<= nginx's", median([r[2] for r in ng]) / median([r[2] for r in p2]))
    report.add("  hits answered by the fast lane (proxy 1w, every load)", f"{lane_share:.1%}")


def _spread(runs: list[tuple[float, float, float]]) -> str:
    """The runs' p99: median (min-max)."""
    p99 = sorted(r[2] for r in runs)
    return f"{median(p99):.2f} ({p99[0]:.2f}-{p99[-1]:.2f})"


async def fast_lane_hits(http: aiohttp.ClientSession, admin: str) -> tuple[float, float]:
    """(fast-lane hits, all hits) so far, from the proxy's own /metrics."""
    async with http.get(admin + "/metrics") as r:
        text = await r.text()
    lane = sum(float(m.group(1)) for m in re.finditer(r"^sidecache_fast_lane_hits_total(?:{[^}]*})? ([\d.e+]+)$",
                                                       text, re.M))
    hits = sum(float(m.group(1)) for m in re.finditer(
        r'^sidecache_requests_total{[^}]*outcome="hit"[^}]*} ([\d.e+]+)$', text, re.M))
    return lane, hits


async def fast_lane_share(http: aiohttp.ClientSession, admin: str, before: tuple[float, float]) -> float:
    lane, hits = await fast_lane_hits(http, admin)
    return (lane - before[0]) / max(hits - before[1], 1.0)
