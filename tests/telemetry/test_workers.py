"""`sidecache serve --workers 2` as a real process: one scrape shows the sum, one reload reaches every worker."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from tests.support.processes import serve
from tests.support.upstream import Upstream
from tests.support.waiting import until

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""
MORE = RULES + """
[[route]]
name = "team"
match = "GET /teams/{team}"
ttl = "5m"
"""


def total(metrics: str, family: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{family}\{{[^}}]*\}} (\S+)$", metrics, re.M))


async def test_two_workers_one_sum_and_one_reload(upstream: Upstream, tmp_path: Path, redis_url: str) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    # workers share their cache through Redis: without one, `--workers 2` is refused (test_cli)
    with serve("--workers", "2", "--rules", str(rules), "--upstream", upstream.url, "--redis", redis_url) as sp:
        # a new connection per request, so SO_REUSEPORT spreads them over both workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:

            async def stats() -> dict:  # type: ignore[type-arg]
                async with http.get(sp.admin_url + "/stats") as r:
                    return await r.json()  # type: ignore[no-any-return]

            async def metrics() -> str:
                async with http.get(sp.admin_url + "/metrics") as r:
                    return await r.text()

            async def both_workers() -> bool:
                return len((await stats())["workers"]) == 2

            await until(both_workers, timeout=8.0)
            for i in range(60):
                async with http.get(f"{sp.proxy_url}/players/p{i % 10}") as r:
                    assert r.status == 200
                    await r.read()

            async def all_counted() -> bool:
                return total(await metrics(), "sidecache_requests_total") == 60

            await until(all_counted, timeout=8.0)
            text = await metrics()
            assert "sidecache_workers 2.0" in text
            assert total(text, "sidecache_request_duration_seconds_count") == 60
            assert total(text, "sidecache_upstream_requests_total") == upstream.hits.total() <= 20
            s = await stats()
            assert s["requests"] == 60 and s["routes"]["player"]["requests"] == 60
            per_worker = {w["index"]: w["requests"] for w in s["workers"]}
            assert sum(per_worker.values()) == 60 and min(per_worker.values()) > 0, per_worker
            assert s["tiers"]["memory"]["max_entries"] == 1000  # 500 in each worker

            rules.write_text(MORE)
            async with http.post(sp.admin_url + "/rules/reload") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["rules"] == 2
            await asyncio.sleep(1.5)  # the other worker follows at its next tick
            for i in range(20):
                async with http.get(f"{sp.proxy_url}/teams/t{i}") as r:
                    await r.read()
                    assert r.headers["Cache-Status"] == "sidecache; fwd=miss; fwd-status=200; stored"

            async def reloads_counted() -> bool:
                return 'sidecache_config_reloads_total{result="ok"} 2.0' in await metrics()

            await until(reloads_counted, timeout=8.0)
