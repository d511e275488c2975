"""A 50 MB body passes through a real `sidecache serve` process both ways without the proxy holding it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.processes import rss_peak_kib, serve

SIZE = 50 * 1024 * 1024
CHUNK = bytes(range(256)) * 256  # 64 KiB


async def test_50mb_download_and_upload_stream_through_in_constant_memory() -> None:
    received = hashlib.sha256()
    received_len = 0

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = SIZE
        await resp.prepare(request)
        for _ in range(SIZE // len(CHUNK)):
            await resp.write(CHUNK)
        return resp

    async def upload(request: web.Request) -> web.Response:
        nonlocal received_len
        async for chunk in request.content.iter_chunked(65536):
            received.update(chunk)
            received_len += len(chunk)
        return web.json_response({"got": received_len})

    app = web.Application(client_max_size=SIZE * 2)
    app.router.add_get("/big", download)
    app.router.add_post("/big", upload)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    try:
        with serve("--upstream", str(origin.make_url("")).rstrip("/")) as proc:
            async with aiohttp.ClientSession() as http:
                await (await http.get(proc.proxy_url + "/warmup")).read()
                before = rss_peak_kib(proc.pid)
                got = hashlib.sha256()
                n = 0
                async with http.get(proc.proxy_url + "/big") as r:
                    assert r.status == 200
                    assert r.headers["Content-Length"] == str(SIZE)
                    async for chunk in r.content.iter_chunked(65536):
                        got.update(chunk)
                        n += len(chunk)
                expected = hashlib.sha256(CHUNK * (SIZE // len(CHUNK))).hexdigest()
                assert n == SIZE and got.hexdigest() == expected

                async def body() -> AsyncIterator[bytes]:
                    for _ in range(SIZE // len(CHUNK)):
                        yield CHUNK
                        await asyncio.sleep(0)

                async with http.post(proc.proxy_url + "/big", data=body()) as r:
                    assert (await r.json())["got"] == SIZE
                assert received.hexdigest() == expected
                growth_mib = (rss_peak_kib(proc.pid) - before) / 1024
        assert growth_mib < 20, f"proxy peak RSS grew {growth_mib:.1f} MiB moving 2 x 50 MiB"
    finally:
        await origin.close()
