"""Real `sidecache serve` processes for tests that need a separate process (memory, workers, signals)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    proxy_url: str
    admin_url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


def rss_peak_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 15.0) -> Iterator[ServeProcess]:
    """Start `python -m proxy serve` on free loopback ports; stop it (by its PID) on exit."""
    listen, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{listen}", "--admin",
           f"127.0.0.1:{admin}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    sp = ServeProcess(proc, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"sidecache serve exited with {proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(sp.admin_url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield sp
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A redis-server of our own on loopback (TCP and a unix socket), no persistence, stopped by its PID.

    Tests that kill, pause or restart Redis start one of these for themselves, so the shared one stays up.
    """

    def __init__(self, directory: Path, *extra: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.socket = directory / "redis.sock"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--unixsocket", str(self.socket), "--unixsocketperm", "700", *self.extra]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: see {self.dir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def answers(self) -> bool:
        """PING answered (an auth error counts: the server is up)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL if it lingers); only the process this object started."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by PID: a crash, no goodbye to the clients."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
