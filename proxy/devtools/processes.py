"""The benchmark's processes: `sidecache serve`, a bare aiohttp app and the sample backend's client, each on a
free loopback port and stopped by its PID; and the probes run as `python -m proxy.devtools.processes`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from aiohttp import web


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def child(cmd: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process of ours, stopped by its PID however the block ends."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(ready_url)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def sidecache_serve(upstream: str, config: Path, workers: int, rules: Path | None = None) -> Iterator[tuple[str, str]]:
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--upstream", upstream,
           "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--workers", str(workers)]
    cmd += ["--rules", str(rules)] if rules is not None else []
    with child(cmd, f"http://127.0.0.1:{admin}/healthz"):
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


@contextmanager
def bare_app(size: int) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "proxy.devtools.processes", "bare", str(port), str(size)]
    with child(cmd, f"http://127.0.0.1:{port}/ready"):
        yield f"http://127.0.0.1:{port}"


class Backend:
    """The sample backend in its own process, so the load generator does not share its event loop."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def calls(self) -> int:
        return sum((await self.calls_by_route()).values())

    async def calls_by_route(self) -> dict[str, int]:
        async with self.http.get(self.url + "/_sample/calls") as r:
            return dict(await r.json())

    async def knobs(self, **knobs: object) -> None:
        """Set the sample backend's fault knobs (batch_latency, batch_fails_all) in its own process."""
        async with self.http.post(self.url + "/_sample/knobs", json=knobs) as r:
            assert r.status == 200, await r.text()


def serve_bare(port: int, size: int) -> None:
    """The ceiling: aiohttp's simplest app, one catch-all route returning a stored body of the same size."""
    body = b'{"pad": "' + b"x" * max(0, size - 11) + b'"}'

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def measure_memory(n: int) -> None:
    from proxy.cache.memory import MemoryTier
    from proxy.policy.entry import CachedResponse

    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    tier = MemoryTier(max_entries=n, max_bytes=2**40, max_entry_bytes=2**20, clock=time.time)
    headers = [("Content-Type", "application/json"), ("Server", "A1Betting/2.0"), ("X-Frame-Options", "DENY")]
    now = time.time()
    before = rss()
    payload = 0
    for i in range(n):
        body = (b'{"i": %d, "pad": "' % i).ljust(1500 - 2, b"x") + b'"}'
        payload += len(body)
        tier.set(f"player-data\x1fname=Player {i}\x1f?stat_types=hits",
                 CachedResponse(status=200, headers=headers, body=body, stored_at=now, ttl=300))
    print(rss() - before, payload)


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "memory":
        measure_memory(int(sys.argv[2]))
