"""Real `sidecache serve` processes for tests that need a separate process (memory, workers, signals)."""

from __future__ import annotations

import os
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
