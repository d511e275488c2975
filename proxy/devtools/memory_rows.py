"""The memory rows of `sidecache bench` (`--only memory`): RSS against what it was asked to hold, each in a
process of its own. 1.5 KB entries set straight into a memory tier; a fresh `sidecache serve` under 100,000 long
distinct URLs with a 64 MiB budget; one 16 MiB answer read by 8 clients. docs/benchmark.md, "Memory rows".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import aiohttp

from proxy.devtools.loadgen import host_port, replay
from proxy.devtools.processes import bare_app, rss, serve_process, shipped_rules
from proxy.devtools.report import Report, ratio_of


async def memory_rows(report: Report, http: aiohttp.ClientSession, tmp: Path, quick: bool) -> None:
    _entries(report, quick)
    await _long_urls(report, http, tmp, quick)
    await _large_answer(report, http, tmp, quick)


def _entries(report: Report, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    print(f"memory: {n:,} entries of 1.5 KB in the memory tier")
    out = subprocess.run([sys.executable, "-m", "proxy.devtools.processes", "memory", str(n)], capture_output=True,
                         text=True, timeout=300)
    growth, payload = map(int, out.stdout.split())
    report.raw["memory"] = {"entries": n, "rss_growth_bytes": growth, "payload_bytes": payload}
    text, ratio = ratio_of(growth / payload)
    report.add("  RSS growth / payload bytes", f"{growth / 2**20:.0f} MiB / {payload / 2**20:.0f} MiB = {text}",
               "<= 2.00x", 2.0 / ratio)




MEMORY_BUDGET: Final = 64 * 2**20
LONG_URLS_CONFIG: Final = f"""
[memory]
max_entries = 1000000
max_bytes = "{MEMORY_BUDGET // 2**20}MiB"
"""
# What a serve process may grow by besides what `max_bytes` counts, none of it per URL: CPython's object headers
# on each stored entry (its struct, header tuples and strings: a few hundred bytes an entry, about 3 MiB for the
# ~8,000 entries that fit here), freed blocks pymalloc and glibc keep for reuse instead of handing them back, and
# the buffers of the 16 client and the upstream connections. Measured: 9 MiB over the budget (2026-12-06); 32 MiB
# leaves room for another allocator's fragmentation while still failing at once if anything grows per URL
# (100,000 targets of 4.5 KB each would be 430 MiB).
FIXED_OVERHEAD: Final = 32 * 2**20
LONG_URL_ROUTE: Final = "/api/v1/optimized/player-data/Aaron%20Judge?stat_types=hits&"  # shipped rule, query = "all"


def long_targets(n: int, seed: int = 5) -> Iterator[str]:
    """n distinct request targets of 2-7 KB on a ruled route (every query parameter is part of its key), made
    one at a time so the load generator does not hold them all."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pool = "".join(rng.choice(letters) for _ in range(16_384))
    for i in range(n):
        size = rng.randint(2000, 7000)
        start = rng.randrange(len(pool) - size)
        yield f"{LONG_URL_ROUTE}n={i}&pad={pool[start:start + size]}"


class _Peak:
    """The largest RSS of a process seen while a load runs, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, rss(pid)
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> _Peak:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss(self.pid))


async def _memory_tier(http: aiohttp.ClientSession, admin: str) -> dict[str, int]:
    async with http.get(admin + "/stats") as r:
        return dict((await r.json())["tiers"]["memory"])


async def _long_urls(report: Report, http: aiohttp.ClientSession, tmp: Path, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    config = tmp / "long-urls.toml"
    config.write_text(LONG_URLS_CONFIG)
    print(f"memory: {n:,} distinct 2-7 KB targets on a ruled route (player-data, query = \"all\"), 16 keep-alive "
          f"connections, through a fresh `sidecache serve` with [memory] max_bytes = "
          f"\"{MEMORY_BUDGET // 2**20}MiB\", no Redis")
    with bare_app(1500, "digits") as origin, serve_process(origin, config, 1, shipped_rules()) as served:
        host, port = host_port(served.proxy)
        await replay(host, port, list(long_targets(200, seed=1)), 4)  # code paths and pools warm, then measure
        before = rss(served.pid)
        async with _Peak(served.pid) as peak:
            lat = await replay(host, port, long_targets(n), 16, timeout=900)
        after = rss(served.pid)
        tier = await _memory_tier(http, served.admin)
    growth, top = after - before, peak.peak - before
    limit = MEMORY_BUDGET + FIXED_OVERHEAD
    report.raw["long_urls"] = {"requests": n, "answered": len(lat), "rss_before": before, "rss_after": after,
                               "rss_peak": peak.peak, "max_bytes": MEMORY_BUDGET, "tier": tier}
    report.add("  long URLs: RSS growth, end | peak", f"{growth / 2**20:.0f} | {top / 2**20:.0f} MiB",
               f"<= max_bytes + {FIXED_OVERHEAD // 2**20} MiB ({limit // 2**20} MiB)", limit / max(top, 1))
    report.add("  long URLs: /stats memory bytes of max_bytes",
               f"{tier['bytes'] / 2**20:.1f} of {tier['max_bytes'] / 2**20:.0f} MiB, {tier['entries']:,} entries, "
               f"{tier['evictions']:,} evicted", "<= max_bytes", tier["max_bytes"] / max(tier["bytes"], 1))


LARGE: Final = 16 * 2**20
LARGE_CONFIG: Final = """
[memory]
max_entries = 1000
max_bytes = "256MiB"
max_entry_bytes = "64MiB"
"""


async def _large_answer(report: Report, http: aiohttp.ClientSession, tmp: Path, quick: bool) -> None:
    clients, rounds = 8, 3 if quick else 10
    config = tmp / "large.toml"
    config.write_text(LARGE_CONFIG)
    print(f"memory: one {LARGE // 2**20} MiB answer (JSON digits) cached on a ruled route, then read by {clients} "
          f"concurrent clients (half of them take the gzip copy), {rounds} times each, through a fresh "
          f"`sidecache serve` with [memory] max_entry_bytes = \"64MiB\"")
    path = "/api/v1/optimized/player-data/Aaron%20Judge?stat_types=hits"
    with bare_app(LARGE, "digits") as origin, serve_process(origin, config, 1, shipped_rules()) as served:
        before = rss(served.pid)
        async with _Peak(served.pid) as peak:
            async with http.get(served.proxy + path) as r:  # the fill
                assert len(await r.read()) == LARGE and r.status == 200, r.status
            for _ in range(rounds):
                sizes = await asyncio.gather(*(_read(http, served.proxy + path, gzip=i % 2 == 0)
                                               for i in range(clients)))
                assert sizes == [LARGE] * clients, sizes
        after = rss(served.pid)
        tier = await _memory_tier(http, served.admin)
    growth, top = after - before, peak.peak - before
    report.raw["large_answer"] = {"payload": LARGE, "clients": clients, "rounds": rounds, "rss_before": before,
                                  "rss_after": after, "rss_peak": peak.peak, "tier": tier}
    text, ratio = ratio_of(top / LARGE)
    report.add("  large answer: RSS growth end | peak, / payload",
               f"{growth / 2**20:.0f} | {top / 2**20:.0f} MiB / {LARGE // 2**20} MiB = {text}", "<= 3.00x",
               3.0 / ratio)
    report.add("  large answer: memory tier in /stats", f"{tier['bytes'] / 2**20:.1f} MiB, {tier['entries']} entries")


async def _read(http: aiohttp.ClientSession, url: str, *, gzip: bool) -> int:
    """The answer's length as the client reads it; with `gzip`, sent the stored gzip copy and inflated here."""
    async with http.get(url, headers={"Accept-Encoding": "gzip" if gzip else "identity"}) as r:
        assert r.status == 200 and (r.headers.get("Content-Encoding") == "gzip") == gzip, r.headers
        return len(await r.read())
