"""What the numbers mean: a grade for the hit ratio and recommendations, each a pure function of a few numbers.

Every function returns a sentence an operator can act on (naming the route or tier and the setting to change),
or None when the numbers give no reason to; tests check them as tables.
"""

from __future__ import annotations

from typing import Final, Literal

from proxy.policy.cache_status import NotStored, reason_kind

Grade = Literal["excellent", "good", "needs_improvement", "no_traffic"]

EXPIRY_WINDOW: Final = 10.0  # seconds past TTL within which a miss counts as "the TTL was just too short"
MIN_MISSES: Final = 20  # fewer misses than this say nothing about a route
EXPIRY_SHARE: Final = 0.25
MIN_EVICTIONS: Final = 100
MIN_REQUESTS: Final = 20
ERROR_SHARE: Final = 0.05
NOT_STORED_SHARE: Final = 0.2
MIN_UNRULED: Final = 100
UNRULED_SHARE: Final = 0.5
MIN_KEY_REQUESTS: Final = 100
LOW_HIT_RATIO: Final = 0.2

_NOT_STORED_HINTS: Final[dict[NotStored, str]] = {
    "uncacheable-body": "the backend answered a body listed in `uncacheable_bodies`, its sign of failure: check it",
    "too-large": "raise [memory] max_entry_bytes",
    "set-cookie": "the backend sets cookies on it; if the body is the same for everyone, set share = \"all-users\"",
    "private": "the backend marks it private; if the body is the same for everyone, set share = \"all-users\"",
    "no-store": "the backend marks it no-store; if the body may be reused, set share = \"all-users\"",
}


def grade(hit_ratio: float, requests: int | None = None) -> Grade:
    """The seed's cache-efficiency grade: excellent above 0.8, good above 0.6; no grade for no requests."""
    if requests == 0:
        return "no_traffic"
    if hit_ratio > 0.8:
        return "excellent"
    if hit_ratio > 0.6:
        return "good"
    return "needs_improvement"


def expiry_advice(route: str, misses: int, expired_soon: int, *, has_swr: bool) -> str | None:
    """Many misses found an entry that had expired only seconds before: the TTL is a little short for the traffic."""
    if misses < MIN_MISSES or expired_soon / misses < EXPIRY_SHARE:
        return None
    fix = "raise stale_while_revalidate" if has_swr else "raise ttl or add stale_while_revalidate"
    return (f"route {route}: {expired_soon / misses:.0%} of misses are expiries within {EXPIRY_WINDOW:g} s of TTL; "
            f"{fix}")


def eviction_advice(
    tier: str, evicted: int, window_s: float, *, entries: int, max_entries: int, size: int, max_bytes: int
) -> str | None:
    """A tier that keeps evicting is too small for the working set; say which bound binds."""
    if evicted < MIN_EVICTIONS:
        return None
    by_count = entries / max_entries if max_entries else 0.0
    by_size = size / max_bytes if max_bytes else 0.0
    if by_count > by_size:  # the bound nearer its limit is the one evicting
        setting, used = "max_entries", f"{entries:,} of {max_entries:,} entries in use"
    else:
        setting = "max_bytes"
        used = f"{size / max_bytes:.0%} of {_size(max_bytes)} in use" if max_bytes else f"{_size(size)} in use"
    return f"{tier} tier evicted {evicted:,} entries in {span(window_s)}; raise [{tier}] {setting} ({used})"


def error_advice(route: str, requests: int, errors: int, *, has_stale_if_error: bool) -> str | None:
    """Clients saw 502/504 on this route; an older copy could have answered them."""
    if requests < MIN_REQUESTS or errors / requests < ERROR_SHARE:
        return None
    share = f"route {route}: {errors / requests:.0%} of requests failed upstream (502/504)"
    if has_stale_if_error:
        return f"{share} with no copy recent enough to serve; raise stale_if_error or look at the backend"
    return f"{share}; add stale_if_error so an older copy answers instead"


def not_stored_advice(route: str, fills: int, not_stored: dict[str, int]) -> str | None:
    """Upstream answers that could not be kept: every later request pays for them again."""
    total = sum(not_stored.values())
    if fills < MIN_REQUESTS or not total or total / fills < NOT_STORED_SHARE:
        return None
    reason = max(sorted(not_stored), key=lambda r: not_stored[r])
    kind = reason_kind(reason)
    if kind == "status":
        hint = f"the backend answered {reason[7:]}; add it to `cache_status` if that answer may be reused"
    else:
        hint = _NOT_STORED_HINTS.get(kind, "see Cache-Status `detail` for why")  # type: ignore[call-overload]
    return f"route {route}: {total / fills:.0%} of upstream answers were not stored (mostly {reason}); {hint}"


def unruled_advice(requests: int, unruled: int) -> str | None:
    """Most traffic passes through untouched: the rules miss the busy paths."""
    if unruled < MIN_UNRULED or unruled / requests < UNRULED_SHARE:
        return None
    return (f"{unruled / requests:.0%} of requests matched no rule and went to the upstream uncached; "
            "add rules for the busiest read-only paths (the access log names them)")


def key_advice(route: str, requests: int, hit_ratio: float, misses: int, expired: int) -> str | None:
    """Few hits, and misses are new keys rather than expiries: the key holds a parameter that varies per call."""
    if requests < MIN_KEY_REQUESTS or hit_ratio >= LOW_HIT_RATIO or not misses or expired / misses >= EXPIRY_SHARE:
        return None
    return (f"route {route}: {hit_ratio:.0%} hit ratio over {requests:,} requests, and most misses are keys never "
            "seen before; check that `key` / `query` leave out parameters that do not change the answer")


def span(seconds: float) -> str:
    """300 -> "5 min", 45 -> "45 s", 7200 -> "2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} GiB"
