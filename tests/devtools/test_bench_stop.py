"""`sidecache bench` stopped by SIGTERM stops every process it started (backend, proxies, bare app, Redis, nginx):
Python's own SIGTERM would end it without unwinding, and leave them all running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import ROOT


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_bench_stopped_by_sigterm_leaves_none_of_its_processes_running() -> None:
    bench = subprocess.Popen([sys.executable, "-m", "proxy", "bench", "--only", "hits", "--quick"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    left: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(started) < 4:  # the backend, the bare app, proxies...
            started |= _descendants(bench.pid)
            time.sleep(0.1)
        assert len(started) >= 4, f"the bench started only {sorted(started)}"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in started):
            time.sleep(0.1)
        left = sorted(p for p in started if _running(p))
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in sorted(p for p in started if _running(p)):  # the test's own cleanup: processes it started
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the bench stopped: {left}"
    assert bench.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
