"""The benchmark's own load generator (used when wrk is not installed) counts what a real server answered."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.devtools.loadgen import burst, replay, run_load


async def test_load_burst_and_replay_against_a_real_server() -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        await asyncio.sleep(0.01 if request.path == "/slow" else 0)
        return web.Response(body=b"x" * 1500)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        port = server.port
        assert port is not None
        result = await run_load("127.0.0.1", port, "/hit", connections=4, seconds=0.3)
        assert result.requests == seen.count("/hit") > 10 and result.errors == 0
        assert 0 < result.percentile(0.5) <= result.percentile(0.99)
        before = seen.count("/hit")
        paced = await run_load("127.0.0.1", port, "/hit", connections=2, seconds=0.3, think=0.05)
        # 2 connections, each asking again 50 ms after an answer: at most 7 requests each in 0.3 s, and the wait is
        # not in the latencies
        assert 2 <= paced.requests == seen.count("/hit") - before <= 14 and paced.errors == 0
        assert paced.percentile(0.99) < 0.05
        lat = await burst("127.0.0.1", port, ["/slow"] * 20)
        assert len(lat) == 20 and min(lat) >= 0.01
        paths = [f"/r?i={i}" for i in range(30)]
        lat = await replay("127.0.0.1", port, paths, concurrency=5)
        assert len(lat) == 30 and sorted(p for p in seen if p.startswith("/r")) == sorted(paths)
    finally:
        await server.close()
