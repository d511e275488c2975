"""Worker snapshots: what crosses processes, and how worker 0 adds them up."""

from __future__ import annotations

from collections import Counter

from proxy.telemetry import snapshots
from proxy.telemetry.metrics import Metrics


def worker(requests: int, latency: float, redis_up: float, entries: float) -> Metrics:
    m = Metrics()
    for _ in range(requests):
        m.request("player", "hit", latency)
    m.upstream_call("player", 200, 0.05)
    m.expired_miss("player", 3.0)
    m.gauges["sidecache_cache_entries"] = lambda: [({"tier": "memory"}, entries)]
    m.gauges["sidecache_redis_up"] = lambda: [({}, redis_up)]
    m.counters["sidecache_redis_errors"] = lambda: [({"error": "TimeoutError"}, 2.0)]
    return m


def test_merge_sums_counters_histograms_and_samples() -> None:
    a, b = worker(3, 0.001, 1.0, 10.0), worker(5, 0.2, 0.0, 7.0)
    b.extra_from_a_later_change = Counter({("player", "x"): 4})  # type: ignore[attr-defined]
    wire = [snapshots.encode(snapshots.snapshot_of(m, worker=i, started_at=0.0, now=1.0)) for i, m in enumerate((a, b))]
    decoded = [snapshots.decode(w) for w in wire]
    assert all(d is not None for d in decoded)
    merged = snapshots.merge(d for d in decoded if d is not None)
    assert merged.requests == Counter({("player", "hit"): 8})
    assert merged.upstream == Counter({("player", 200): 2})  # the int status survives the trip
    assert merged.latency["player"].count == 8 and merged.latency["player"].quantile(0.99) > 0.1
    assert merged.expired["player"].count == 2
    assert merged.extra_from_a_later_change == Counter({("player", "x"): 4})  # type: ignore[attr-defined]
    assert merged.gauges["sidecache_cache_entries"]() == [({"tier": "memory"}, 17.0)]
    assert merged.gauges["sidecache_redis_up"]() == [({}, 0.0)]  # up only if every worker sees it up
    assert merged.counters["sidecache_redis_errors"]() == [({"error": "TimeoutError"}, 4.0)]


def test_a_torn_or_foreign_snapshot_is_left_out() -> None:
    assert snapshots.decode(b"\x93garbage") is None
    good = snapshots.encode(snapshots.snapshot_of(Metrics(), worker=1, started_at=0.0, now=1.0))
    assert snapshots.decode(good[: len(good) // 2]) is None
    assert snapshots.decode(good) is not None
