"""The grade and each recommendation, as tables: numbers in, sentence (or nothing) out."""

from __future__ import annotations

import pytest

from proxy.ops import insights
from proxy.telemetry.metrics import EXPIRY_BUCKETS


@pytest.mark.parametrize(("ratio", "grade"), [
    (0.95, "excellent"), (0.81, "excellent"), (0.8, "good"), (0.61, "good"), (0.6, "needs_improvement"),
    (0.0, "needs_improvement"),
])
def test_grade(ratio: float, grade: str) -> None:
    assert insights.grade(ratio) == grade


def test_no_requests_get_no_grade() -> None:
    assert insights.grade(0.0, 0) == "no_traffic" and insights.grade(0.0, 1) == "needs_improvement"


@pytest.mark.parametrize(("misses", "soon", "swr", "expected"), [
    (50, 20, False, "route game-logs: 40% of misses are expiries within 10 s of TTL; "
                    "raise ttl or add stale_while_revalidate"),
    (50, 20, True, "route game-logs: 40% of misses are expiries within 10 s of TTL; raise stale_while_revalidate"),
    (50, 12, False, None),  # 24%: below the 25% that makes it worth a change
    (19, 19, False, None),  # too few misses to say anything
    (20, 5, False, "route game-logs: 25% of misses are expiries within 10 s of TTL; "
                   "raise ttl or add stale_while_revalidate"),
])
def test_expiry_advice(misses: int, soon: int, swr: bool, expected: str | None) -> None:
    assert insights.expiry_advice("game-logs", misses, soon, has_swr=swr) == expected


MiB = 1024 * 1024


@pytest.mark.parametrize(("evicted", "window", "entries", "max_entries", "size", "max_bytes", "expected"), [
    (1200, 300, 300, 500, 63 * MiB, 64 * MiB,
     "memory tier evicted 1,200 entries in 5 min; raise [memory] max_bytes (98% of 64 MiB in use)"),
    (1200, 300, 500, 500, 2 * MiB, 64 * MiB,
     "memory tier evicted 1,200 entries in 5 min; raise [memory] max_entries (500 of 500 entries in use)"),
    (150, 45, 64, 80, 70 * 1024, 64 * MiB,  # entries nearer their bound than bytes
     "memory tier evicted 150 entries in 45 s; raise [memory] max_entries (64 of 80 entries in use)"),
    (150, 45, 500, 500, 64 * MiB, 64 * MiB,  # both bounds bind: bytes is the one to raise first
     "memory tier evicted 150 entries in 45 s; raise [memory] max_bytes (100% of 64 MiB in use)"),
    (99, 300, 500, 500, 64 * MiB, 64 * MiB, None),
    (0, 300, 0, 500, 0, 64 * MiB, None),
])
def test_eviction_advice(evicted: int, window: float, entries: int, max_entries: int, size: int, max_bytes: int,
                         expected: str | None) -> None:
    got = insights.eviction_advice("memory", evicted, window, entries=entries, max_entries=max_entries, size=size,
                                   max_bytes=max_bytes)
    assert got == expected


@pytest.mark.parametrize(("requests", "errors", "sie", "expected"), [
    (100, 8, False, "route player-data: 8% of requests failed upstream (502/504); "
                    "add stale_if_error so an older copy answers instead"),
    (100, 8, True, "route player-data: 8% of requests failed upstream (502/504) with no copy recent enough to "
                   "serve; raise stale_if_error or look at the backend"),
    (100, 4, False, None),
    (10, 10, False, None),
])
def test_error_advice(requests: int, errors: int, sie: bool, expected: str | None) -> None:
    assert insights.error_advice("player-data", requests, errors, has_stale_if_error=sie) == expected


@pytest.mark.parametrize(("fills", "not_stored", "expected"), [
    (100, {"uncacheable-body": 30, "status-404": 5},
     "route prop-analysis: 35% of upstream answers were not stored (mostly uncacheable-body); the backend answered "
     "a body listed in `uncacheable_bodies`, its sign of failure: check it"),
    (40, {"status-404": 10},
     "route prop-analysis: 25% of upstream answers were not stored (mostly status-404); the backend answered 404; "
     "add it to `cache_status` if that answer may be reused"),
    (40, {"too-large": 40},
     "route prop-analysis: 100% of upstream answers were not stored (mostly too-large); "
     "raise [memory] max_entry_bytes"),
    (100, {"status-500": 10}, None),
    (10, {"too-large": 10}, None),
    (100, {}, None),
])
def test_not_stored_advice(fills: int, not_stored: dict[str, int], expected: str | None) -> None:
    assert insights.not_stored_advice("prop-analysis", fills, not_stored) == expected


@pytest.mark.parametrize(("requests", "unruled", "expected"), [
    (400, 300, "75% of requests matched no rule and went to the upstream uncached; add rules for the busiest "
               "read-only paths (the access log names them)"),
    (400, 100, None),
    (150, 99, None),
])
def test_unruled_advice(requests: int, unruled: int, expected: str | None) -> None:
    assert insights.unruled_advice(requests, unruled) == expected


@pytest.mark.parametrize(("requests", "ratio", "misses", "expired", "expected"), [
    (400, 0.05, 380, 10, "route season-stats: 5% hit ratio over 400 requests, and most misses are keys never seen "
                         "before; check that `key` / `query` leave out parameters that do not change the answer"),
    (400, 0.05, 380, 200, None),  # misses are expiries: the TTL advice covers it
    (400, 0.5, 200, 0, None),
    (99, 0.0, 99, 0, None),
])
def test_key_advice(requests: int, ratio: float, misses: int, expired: int, expected: str | None) -> None:
    assert insights.key_advice("season-stats", requests, ratio, misses, expired) == expected


@pytest.mark.parametrize(("seconds", "text"), [(45, "45 s"), (300, "5 min"), (301.4, "5 min"), (7200, "2 h")])
def test_span(seconds: float, text: str) -> None:
    assert insights.span(seconds) == text


def test_the_within_window_count_is_read_off_a_bucket_bound() -> None:
    assert insights.EXPIRY_WINDOW in EXPIRY_BUCKETS
