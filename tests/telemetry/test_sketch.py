"""Percentiles from the quantile sketch: within its relative error, never above the slowest request, and the
same after crossing workers as msgpack snapshots."""

from __future__ import annotations

import random

import pytest

from proxy.config.rules import RuleSet
from proxy.ops.stats import History, stats_of
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.sketch import RELATIVE_ERROR, Sketch
from proxy.telemetry.snapshots import decode, encode, merge, snapshot_of


def test_a_route_whose_slowest_request_took_1_56_s_never_shows_p99_above_it() -> None:
    """Interpolating in the 1-2.5 s Prometheus bucket gave p99 = 2,484 ms for exactly this traffic."""
    m = Metrics()
    for _ in range(97):
        m.request("player", "hit", 0.004)
    for seconds in (1.2, 1.4, 1.56):
        m.request("player", "miss", seconds)
    route = stats_of(m, [], rules=RuleSet(), history=History(0.0), now=1.0, started_at=0.0).routes["player"]
    assert route.p99_ms <= 1560.0
    assert abs(route.p50_ms - 4.0) <= 4.0 * RELATIVE_ERROR


def test_workers_merge_their_sketches_through_snapshots() -> None:
    rng = random.Random(7)
    workers = [Metrics() for _ in range(3)]
    every: list[float] = []
    for i in range(3000):
        seconds = rng.lognormvariate(-4, 1.2)
        every.append(seconds)
        workers[i % 3].request("player", "miss", seconds)
    snaps = [decode(encode(snapshot_of(w, worker=i, started_at=0.0, now=1.0))) for i, w in enumerate(workers)]
    assert all(s is not None for s in snaps)
    view = merge(s for s in snaps if s is not None)
    stats = stats_of(view, [], rules=RuleSet(), history=History(0.0), now=1.0, started_at=0.0)
    every.sort()
    for got, q in ((stats.latency.p50_ms, 0.5), (stats.latency.p95_ms, 0.95), (stats.latency.p99_ms, 0.99)):
        true = every[int(q * (len(every) - 1))] * 1000
        assert abs(got - true) <= true * RELATIVE_ERROR + 0.001, q
    assert stats.routes["player"].p99_ms <= every[-1] * 1000


@pytest.mark.parametrize("values", [[0.0, 0.0, 0.5], [3.0], [0.001, 0.002, 0.003, 100.0]])
def test_quantiles_stay_within_the_values_seen(values: list[float]) -> None:
    s = Sketch()
    for v in values:
        s.add(v)
    assert s.quantile(0.0) == min(values) and s.quantile(1.0) == max(values)
    assert all(min(values) <= s.quantile(q / 100) <= max(values) for q in range(101))


def test_an_empty_sketch_reads_zero_and_merging_needs_the_same_error() -> None:
    assert Sketch().quantile(0.99) == 0.0
    with pytest.raises(ValueError, match="relative error"):
        Sketch(0.01).merge(Sketch(0.02))
