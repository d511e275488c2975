"""The benchmark's processes: `sidecache serve`, a bare aiohttp app and the sample backend's client, each on a
free loopback port and stopped by its PID; and the probes run as `python -m proxy.devtools.processes`."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import aiohttp
from aiohttp import web


def free_port() -> int:
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
        _stop(proc)


class Served(NamedTuple):
    """A running `sidecache serve`: its two listeners and the PID of the process that serves them."""

    proxy: str
    admin: str
    pid: int


@contextmanager
def serve_process(upstream: str, config: Path, workers: int, rules: Path | None = None,
                  redis: str | None = None) -> Iterator[Served]:
    """`sidecache serve` as a child of ours; with one worker the child itself serves (no supervisor), so `pid` is
    the process whose memory the proxy's work costs."""
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--upstream", upstream,
           "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--workers", str(workers)]
    cmd += ["--rules", str(rules)] if rules is not None else []
    cmd += ["--redis", redis] if redis is not None else []
    with child(cmd, f"http://127.0.0.1:{admin}/healthz") as proc:
        yield Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", proc.pid)


@contextmanager
def sidecache_serve(upstream: str, config: Path, workers: int, rules: Path | None = None,
                    redis: str | None = None) -> Iterator[tuple[str, str]]:
    with serve_process(upstream, config, workers, rules, redis) as served:
        yield served.proxy, served.admin


def rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes, from /proc/<pid>/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def bare_app(size: int, body: str = "pad") -> Iterator[str]:
    """The bare app on a free port; `body` "pad" answers {"pad": "xxx..."}, "digits" a JSON array of pseudo-random
    numbers, which gzip shrinks about as much as real JSON (not 1000x, as it does a run of one letter)."""
    port = free_port()
    cmd = [sys.executable, "-m", "proxy.devtools.processes", "bare", str(port), str(size), body]
    with child(cmd, f"http://127.0.0.1:{port}/ready"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A redis-server of our own on a free loopback port, nothing kept on disk, stopped by its PID; None when
    Debian's redis-server is not installed (`--workers 2` needs a shared Redis, as a deployment would run it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port, folder = free_port(), tempfile.mkdtemp(prefix="sidecache-bench-redis-")
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ping(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis-server on 127.0.0.1:{port} did not answer PING")
        time.sleep(0.05)


NGINX_CONF = """
user root;
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache keys_zone=bench:10m;
    upstream origin {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
        }}
    }}
}}
"""


@contextmanager
def nginx_cache(upstream: str, workers: int) -> Iterator[str | None]:
    """Debian's nginx(-light) with `proxy_cache` in front of the same upstream, for a side-by-side hit row; None
    when nginx is not installed. Its own folder, loopback only, stopped by its PID."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        yield None
        return
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="sidecache-bench-nginx-"))
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, dir=folder, port=port, upstream=upstream.split("//", 1)[-1]))
    try:
        with child([binary, "-c", str(conf), "-p", str(folder)], f"http://127.0.0.1:{port}/health"):
            yield f"http://127.0.0.1:{port}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def bare_body(size: int, kind: str = "pad") -> bytes:
    """`size` bytes of JSON: one padded string, or ("digits") an array of pseudo-random numbers."""
    if kind == "pad":
        return b'{"pad": "' + b"x" * max(0, size - 11) + b'"}'
    rng = random.Random(size)
    inner = ",".join(str(rng.getrandbits(32)) for _ in range(size // 10 + 1)).encode()[:max(1, size - 2)]
    return b"[" + (inner[:-1] + b"0" if inner.endswith(b",") else inner) + b"]"


def serve_bare(port: int, size: int, kind: str = "pad") -> None:
    """The ceiling: aiohttp's simplest app, one catch-all route returning a stored body of the same size."""
    body = bare_body(size, kind)

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
        serve_bare(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
    elif sys.argv[1] == "memory":
        measure_memory(int(sys.argv[2]))


def shipped_rules() -> Path:
    """The A1Betting rules as shipped: ./rules when run from a checkout, else the copy bundled in the package."""
    local = Path("rules") / "a1betting.toml"
    return local if local.is_file() else Path(__file__).parent.parent / "defaults" / "a1betting.toml"
