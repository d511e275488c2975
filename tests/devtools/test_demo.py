"""`sidecache demo` runs from the command line and shows the proxy saving backend calls."""

from __future__ import annotations

import re

from tests.support.processes import run


def test_demo_prints_requests_backend_calls_and_hit_ratio() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    sent = int(re.search(r"requests through the proxy\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    calls = int(re.search(r"backend calls\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert sent == 600
    assert 0 < calls <= 100  # every distinct thing fetched at most once
    assert "wave 2: 3 users open the prop screen at once, 300 requests -> 0 backend calls" in out
    assert re.search(r"hit ratio\s+9\d\.\d%", out)  # batched prop misses count as served: one call answers many
    assert re.search(r"batching\s+60 prop requests answered by \d+ batch calls", out)
    assert "'prop-analysis'" not in out  # no prop went to the single endpoint
    assert "/stats" not in out and "the demo's proxy has stopped" in out  # no URL that is dead once it is printed
