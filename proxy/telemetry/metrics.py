"""Counters and latency histograms kept as plain numbers on the hot path, exported to Prometheus at scrape time.

A request only increments a dict entry and a bucket; prometheus-client's label lookups and locks run when
`/metrics` is scraped, through a custom collector on an explicit CollectorRegistry (never the global one).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.telemetry.sketch import Sketch

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
OUTCOMES: Final = ("hit", "miss", "stale", "collapsed", "batched", "bypass", "error")
EXPIRY_BUCKETS: Final = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Hooks other parts register into `gauges`/`counters`; named here so dashboards can rely on them before they do.
RESERVED: Final = {"sidecache_redis_up": "gauge", "sidecache_redis_errors": "counter"}


class Histogram:
    """Fixed buckets for Prometheus, cumulative on export; beside them a quantile sketch, which is what
    percentiles are read from (within 1 %, never above the largest value seen)."""

    __slots__ = ("bounds", "counts", "sum", "count", "sketch")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.sketch = Sketch()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
        self.sketch.add(value)

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.count += other.count
        self.sketch.merge(other.sketch)

    def quantile(self, q: float) -> float:
        return self.sketch.quantile(q)

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            acc += n
            out.append((bound, float(acc)))
        return out


class Metrics:
    """Everything the proxy counts, per route; `/stats` and `/metrics` both read from here."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (route, outcome)
        self.upstream: Counter[tuple[str, int]] = Counter()  # (route, status)
        self.upstream_errors: Counter[tuple[str, str]] = Counter()  # (route, error class)
        self.latency: dict[str, Histogram] = {}  # route -> client-facing seconds
        self.upstream_latency: dict[str, Histogram] = {}
        self.gauges: dict[str, Callable[[], list[tuple[dict[str, str], float]]]] = {}
        self.counters: dict[str, Callable[[], list[tuple[dict[str, str], float]]]] = {}
        self.batches: Counter[str] = Counter()  # route -> batch calls sent upstream
        self.batch_items: dict[str, Histogram] = {}  # route -> items per batch call
        self.batch_deduplicated: Counter[str] = Counter()  # route -> items that joined an identical one
        self.batch_fallbacks: Counter[tuple[str, str]] = Counter()  # (route, reason) -> items re-issued alone
        self.batch_probes: Counter[str] = Counter()  # route -> probe batches sent while its breaker was open
        self.expired: dict[str, Histogram] = {}  # route -> how long past its TTL the entry a lookup found was
        self.not_stored: Counter[tuple[str, str]] = Counter()  # (route, reason) of fills that were not stored
        self.reloads: Counter[str] = Counter()  # "ok" | "rejected"
        self.pool_timeouts: Counter[str] = Counter()  # route -> answered 503: no upstream connection came free
        # Across `--workers`, a registered gauge's samples are summed unless named here ("max" or "min").
        self.gauge_merge: dict[str, str] = {"sidecache_redis_up": "min"}

    def expired_miss(self, route: str, seconds_past_ttl: float) -> None:
        """A lookup found an entry too old to use: the insights tell a TTL a little too short from a cold key."""
        _observe(self.expired, route, seconds_past_ttl, EXPIRY_BUCKETS)

    def not_storable(self, route: str, reason: str) -> None:
        self.not_stored[(route, reason)] += 1

    def batch_sent(self, route: str, items: int) -> None:
        self.batches[route] += 1
        _observe(self.batch_items, route, items, BATCH_SIZE_BUCKETS)

    def request(self, route: str, outcome: str, seconds: float) -> None:
        self.requests[(route, outcome)] += 1
        h = self.latency.get(route)  # `_observe`, inlined: every request, hits included, counts here
        if h is None:
            h = self.latency[route] = Histogram()
        h.observe(seconds)

    def upstream_call(self, route: str, status: int, seconds: float) -> None:
        self.upstream[(route, status)] += 1
        _observe(self.upstream_latency, route, seconds)

    def upstream_error(self, route: str, error: str) -> None:
        self.upstream_errors[(route, error)] += 1

    def pool_timeout(self, route: str) -> None:
        self.pool_timeouts[route] += 1

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Exporter(self))
        return registry


def _observe(hists: dict[str, Histogram], route: str, value: float,
             bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
    h = hists.get(route)
    if h is None:
        h = hists[route] = Histogram(bounds)
    h.observe(value)


class _Exporter(Collector):
    """Turns Metrics into Prometheus families when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter("sidecache_requests", "Client requests by route and cache outcome.", ["route", "outcome"],
                       m.requests)
        yield _counter("sidecache_upstream_requests", "Calls made to the upstream by route and status.",
                       ["route", "status"], m.upstream)
        yield _counter("sidecache_upstream_errors", "Upstream calls that failed without a response.",
                       ["route", "error"], m.upstream_errors)
        for name, doc, hists in (
            ("sidecache_request_duration_seconds", "Client-facing latency by route.", m.latency),
            ("sidecache_upstream_duration_seconds", "Upstream call latency by route.", m.upstream_latency),
            ("sidecache_batch_items", "Items per batch call sent upstream, by route.", m.batch_items),
        ):
            yield _histogram(name, doc, hists)
        yield _counter("sidecache_batches", "Batch calls sent upstream by route.", ["route"], m.batches)
        yield _counter("sidecache_batch_deduplicated", "Batch items that joined an identical item in the same window.",
                       ["route"], m.batch_deduplicated)
        yield _counter("sidecache_batch_fallbacks", "Batch items re-issued alone to the single endpoint.",
                       ["route", "reason"], m.batch_fallbacks)
        yield _counter("sidecache_batch_probes", "Probe batches sent while a route's batch breaker was open.",
                       ["route"], m.batch_probes)
        yield from _operations(m)
        for name, read in sorted(m.gauges.items()):
            yield _family(GaugeMetricFamily, name, read())
        for name, read in sorted(m.counters.items()):
            yield _family(CounterMetricFamily, name, read())


def _operations(m: Metrics) -> Iterator[Metric]:
    """The families the insights and operators rely on: expiries, unstored fills, reloads, reserved hooks."""
    yield _histogram("sidecache_miss_after_expiry_seconds",
                     "Lookups that found an entry past its TTL, by how long past, by route.", m.expired)
    yield _counter("sidecache_fills_not_stored", "Upstream answers that were not stored, by route and reason.",
                   ["route", "reason"], m.not_stored)
    yield _counter("sidecache_upstream_pool_timeouts",
                   "Requests answered 503: no upstream connection came free within pool_timeout, by route.",
                   ["route"], m.pool_timeouts)
    yield _counter("sidecache_config_reloads", "Config and rules reloads by result (ok, rejected).", ["result"],
                   m.reloads)
    for name, kind in RESERVED.items():
        if name not in m.gauges and name not in m.counters:
            yield (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, name.replace("_", " "))


def _counter(name: str, doc: str, labels: list[str], counts: Mapping[Any, int]) -> Metric:
    """One counter family from a Counter keyed by a label value, or by a tuple of them in `labels` order."""
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(counts.items()):
        fam.add_metric([str(k) for k in (key if isinstance(key, tuple) else (key,))], n)
    return fam


def _histogram(name: str, doc: str, hists: Mapping[str, Histogram]) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=["route"])
    for route, h in sorted(hists.items()):
        fam.add_metric([route], h.cumulative(), h.sum)
    return fam


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, samples: list[tuple[dict[str, str], float]]
) -> Metric:
    labels = sorted(samples[0][0]) if samples else []
    fam = kind(name, name.replace("_", " "), labels=labels)
    for lbl, value in samples:
        fam.add_metric([lbl[k] for k in labels], value)
    return fam
