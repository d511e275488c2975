"""`GET /stats`: the numbers of every worker as typed JSON, per route and overall, with a grade and advice."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import msgspec

from proxy import __version__
from proxy.config.rules import RuleSet
from proxy.ops import insights
from proxy.ops.insights import Grade
from proxy.telemetry.metrics import Histogram, Metrics
from proxy.telemetry.snapshots import Samples, Snapshot

SERVED: Final = frozenset({"hit", "stale", "collapsed", "batched"})  # answered without an upstream call of their own
UNRULED: Final = "-"
HISTORY: Final = 600  # samples kept (10 min at one a second)
EVICTION_WINDOW: Final = 300.0


class Percentiles(msgspec.Struct, frozen=True):
    p50_ms: float
    p95_ms: float
    p99_ms: float


class RouteStats(msgspec.Struct, frozen=True, kw_only=True):
    """One rule's numbers ("-" is every request no rule matched)."""

    requests: int
    outcomes: dict[str, int]
    hits: int
    hit_ratio: float
    grade: Grade
    upstream_calls: int
    upstream_calls_saved: int
    upstream_status: dict[str, int]
    upstream_errors: dict[str, int]
    misses: int
    expired_misses: int  # misses that found an entry past its TTL
    expired_within_10s: int  # ... that had expired at most insights.EXPIRY_WINDOW before
    not_stored: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    upstream_latency: Percentiles
    batch_breaker: str | None = None  # a batched route's breaker: "closed" (batching) or "open" (single calls)
    batch_breaker_opened: int = 0  # times it opened


class TierStats(msgspec.Struct, frozen=True, kw_only=True):
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int
    evictions: int
    evicted_recently: int
    recent_window_s: float


class WorkerStats(msgspec.Struct, frozen=True):
    index: int
    pid: int
    requests: int
    age_s: float  # how old this worker's numbers are (0 for the one answering)


class RedisNodeStats(msgspec.Struct, frozen=True):
    address: str
    role: str  # "primary", "replica" or "sentinel"
    up: bool  # answered its last PING (once a second), in every worker's view


class RedisStats(msgspec.Struct, frozen=True):
    status: str  # "up", "down" or "not configured": the shared tier as a whole (its breaker)
    errors: dict[str, int]
    mode: str = ""  # "single", "cluster" or "sentinel"
    nodes: list[RedisNodeStats] = []


class Recommendation(msgspec.Struct, frozen=True):
    kind: str
    message: str


class FastLaneStats(msgspec.Struct, frozen=True):
    """The hit fast lane (`[server] fast_lane`): how much of the hit traffic skipped aiohttp's machinery."""

    hits: int  # fresh hits it answered, replays included
    replays: int  # of those, answers written again for the very same request bytes (serving/replay.py)
    share_of_hits: float  # of every answer counted as a hit
    followers: int = 0  # collapsed followers parked on a fill and answered by the lane (serving/parking.py)
    misses: int = 0  # cold misses whose fill the lane started itself and answered


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Everything /stats answers; the dashboard and scripts read it."""

    version: str
    at: float  # unix time of these numbers
    uptime_s: float
    workers: list[WorkerStats]
    requests: int
    hits: int
    hit_ratio: float
    grade: Grade
    upstream_calls: int
    upstream_calls_saved: int
    latency: Percentiles
    upstream_latency: Percentiles
    tiers: dict[str, TierStats]
    inflight_fills: int
    coalesced_waiters: int
    fast_lane: FastLaneStats | None  # None: the fast lane is off
    redis: RedisStats
    reloads: dict[str, int]
    recommendations: list[Recommendation]
    routes: dict[str, RouteStats]


class Sample(msgspec.Struct, array_like=True, frozen=True):
    """The running totals at one moment; the dashboard draws the differences."""

    t: float
    requests: int
    hits: int
    upstream_calls: int
    evictions: dict[str, int]


class History:
    """The last HISTORY samples, one a second, so the dashboard has a past and evictions have a window."""

    def __init__(self, started_at: float) -> None:
        self.samples: deque[Sample] = deque([Sample(started_at, 0, 0, 0, {})], maxlen=HISTORY)

    def record(self, sample: Sample) -> None:
        self.samples.append(sample)

    def evicted_since(self, tier: str, total: int, now: float) -> tuple[int, float]:
        """Evictions over about the last EVICTION_WINDOW (longer only when no sample is that old)."""
        base = self.samples[0]
        for s in self.samples:
            if s.t > now - EVICTION_WINDOW:
                break
            base = s
        return max(0, total - base.evictions.get(tier, 0)), max(0.0, now - base.t)


def _pct(h: Histogram | None) -> Percentiles:
    if h is None:
        return Percentiles(0.0, 0.0, 0.0)
    return Percentiles(*(round(h.quantile(q) * 1000, 3) for q in (0.5, 0.95, 0.99)))


def _merged(hists: Iterable[Histogram]) -> Histogram | None:
    out: Histogram | None = None
    for h in hists:
        if out is None:
            out = Histogram(h.bounds)
        if h.bounds == out.bounds:
            out.merge(h)
    return out


def _by_label(samples: Samples, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for labels, value in samples:
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + int(value)
    return out


def _read(read: Callable[[], Samples] | None) -> Samples:
    return read() if read is not None else []


def _total(registered: Mapping[str, Callable[[], Samples]], name: str) -> int:
    """A registered gauge or counter, summed over its labels (0 when none is registered)."""
    return int(sum(v for _, v in _read(registered.get(name))))


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def sample_of(view: Metrics, now: float) -> Sample:
    requests = sum(view.requests.values())
    hits = sum(n for (_, o), n in view.requests.items() if o in SERVED)
    evictions = _by_label(_read(view.counters.get("sidecache_cache_evictions")), "tier")
    return Sample(round(now, 3), requests, hits, sum(view.upstream.values()), evictions)


def route_stats(view: Metrics, route: str) -> RouteStats:
    outcomes = {o: n for (r, o), n in view.requests.items() if r == route}
    requests = sum(outcomes.values())
    hits = sum(n for o, n in outcomes.items() if o in SERVED)
    calls = sum(n for (r, _), n in view.upstream.items() if r == route)
    expired = view.expired.get(route)
    soon = 0
    if expired is not None:
        soon = sum(n for bound, n in zip(expired.bounds, expired.counts, strict=False)
                   if bound <= insights.EXPIRY_WINDOW)
    pct = _pct(view.latency.get(route))
    breaker = _by_label(_read(view.gauges.get("sidecache_batch_breaker_open")), "route")
    opened = _by_label(_read(view.counters.get("sidecache_batch_breaker_opened")), "route")
    return RouteStats(
        requests=requests, outcomes=outcomes, hits=hits, hit_ratio=_ratio(hits, requests),
        grade=insights.grade(_ratio(hits, requests), requests), upstream_calls=calls,
        upstream_calls_saved=0 if route == UNRULED else max(0, requests - calls),
        upstream_status={str(s): n for (r, s), n in sorted(view.upstream.items()) if r == route},
        upstream_errors={e: n for (r, e), n in sorted(view.upstream_errors.items()) if r == route},
        misses=outcomes.get("miss", 0), expired_misses=expired.count if expired else 0, expired_within_10s=soon,
        not_stored={why: n for (r, why), n in sorted(view.not_stored.items()) if r == route},
        p50_ms=pct.p50_ms, p95_ms=pct.p95_ms, p99_ms=pct.p99_ms,
        upstream_latency=_pct(view.upstream_latency.get(route)),
        batch_breaker=None if route not in breaker else "open" if breaker[route] else "closed",
        batch_breaker_opened=opened.get(route, 0),
    )


def fast_lane_stats(view: Metrics) -> FastLaneStats | None:
    if "sidecache_fast_lane_hits" not in view.counters:
        return None
    lane = _total(view.counters, "sidecache_fast_lane_hits")
    hits = sum(n for (_, o), n in view.requests.items() if o == "hit")
    return FastLaneStats(lane, _total(view.counters, "sidecache_fast_lane_replays"), _ratio(lane, hits),
                         _total(view.counters, "sidecache_fast_lane_followers"),
                         _total(view.counters, "sidecache_fast_lane_misses"))


def tier_stats(view: Metrics, history: History, now: float) -> dict[str, TierStats]:
    """Per tier, from the gauges every tier registers (sidecache_cache_*{tier=...})."""
    cols = {name: _by_label(_read(view.gauges.get(f"sidecache_cache_{name}")), "tier")
            for name in ("entries", "bytes", "max_entries", "max_bytes")}
    evictions = _by_label(_read(view.counters.get("sidecache_cache_evictions")), "tier")
    out = {}
    for tier in sorted(set(cols["entries"]) | set(evictions)):
        recent, window = history.evicted_since(tier, evictions.get(tier, 0), now)
        out[tier] = TierStats(
            entries=cols["entries"].get(tier, 0), bytes=cols["bytes"].get(tier, 0),
            max_entries=cols["max_entries"].get(tier, 0), max_bytes=cols["max_bytes"].get(tier, 0),
            evictions=evictions.get(tier, 0), evicted_recently=recent, recent_window_s=round(window, 1),
        )
    return out


def recommendations(routes: dict[str, RouteStats], tiers: dict[str, TierStats], rules: RuleSet,
                    requests: int) -> list[Recommendation]:
    """Every piece of advice the numbers support, most specific first."""
    out: list[Recommendation] = []

    def add(kind: str, message: str | None) -> None:
        if message is not None:
            out.append(Recommendation(kind, message))

    for name, r in routes.items():
        rule = rules.by_name.get(name)
        if rule is None:
            continue
        add("ttl", insights.expiry_advice(name, r.misses, r.expired_within_10s,
                                          has_swr=rule.route.stale_while_revalidate > 0))
        add("errors", insights.error_advice(name, r.requests, r.outcomes.get("error", 0),
                                            has_stale_if_error=rule.route.stale_if_error > 0))
        add("not_stored", insights.not_stored_advice(name, r.upstream_calls, r.not_stored))
        add("key", insights.key_advice(name, r.requests, r.hit_ratio, r.misses, r.expired_misses))
    for tier, t in tiers.items():
        add("capacity", insights.eviction_advice(tier, t.evicted_recently, t.recent_window_s, entries=t.entries,
                                                 max_entries=t.max_entries, size=t.bytes, max_bytes=t.max_bytes))
    unruled = routes.get(UNRULED)
    add("rules", insights.unruled_advice(requests, unruled.requests if unruled else 0))
    return out


def stats_of(view: Metrics, snaps: list[Snapshot], *, rules: RuleSet, history: History, now: float,
             started_at: float) -> Stats:
    """The merged numbers of every worker, shaped for people and scripts."""
    routes = {route: route_stats(view, route) for route in sorted({r for r, _ in view.requests})}
    requests = sum(r.requests for r in routes.values())
    hits = sum(r.hits for r in routes.values())
    tiers = tier_stats(view, history, now)
    redis_up = _read(view.gauges.get("sidecache_redis_up"))
    nodes = _read(view.gauges.get("sidecache_redis_node_up"))
    redis = RedisStats(
        "not configured" if not redis_up else "up" if all(v >= 1 for _, v in redis_up) else "down",
        {k: v for k, v in _by_label(_read(view.counters.get("sidecache_redis_errors")), "error").items()},
        mode=next((labels.get("mode", "") for labels, _ in nodes), ""),
        nodes=[RedisNodeStats(labels.get("node", ""), labels.get("role", ""), v >= 1) for labels, v in nodes],
    )
    return Stats(
        version=__version__, at=round(now, 3), uptime_s=round(now - started_at, 3),
        workers=[WorkerStats(s.worker, s.pid, s.requests, round(max(0.0, now - s.written_at), 3))
                 for s in sorted(snaps, key=lambda s: s.worker)],
        requests=requests, hits=hits, hit_ratio=_ratio(hits, requests),
        grade=insights.grade(_ratio(hits, requests), requests),
        upstream_calls=sum(view.upstream.values()),
        upstream_calls_saved=sum(r.upstream_calls_saved for r in routes.values()),
        latency=_pct(_merged(view.latency.values())), upstream_latency=_pct(_merged(view.upstream_latency.values())),
        tiers=tiers, inflight_fills=_total(view.gauges, "sidecache_inflight_fills"),
        coalesced_waiters=_total(view.gauges, "sidecache_coalesced_waiters"), fast_lane=fast_lane_stats(view),
        redis=redis, reloads=dict(view.reloads),
        recommendations=recommendations(routes, tiers, rules, requests), routes=routes,
    )

