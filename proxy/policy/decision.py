"""What to do with what the tiers found for a key: the one decision every caching path runs (hishel's pattern).

A closed union of small frozen types; the driver in serving/caching.py matches on it with `assert_never`, for
ruled routes and for routes the origin's own headers govern alike.
"""

from __future__ import annotations

import msgspec
from multidict import CIMultiDict

from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import State, state
from proxy.policy.validators import revalidation_headers


class Hit(msgspec.Struct, frozen=True):
    """Fresh: answer from the entry (RFC 9111 4.2)."""

    entry: CachedResponse


class ServeStale(msgspec.Struct, frozen=True):
    """Within stale-while-revalidate: answer from the entry now, refresh it once in the background (RFC 5861 3)."""

    entry: CachedResponse


class Revalidate(msgspec.Struct, frozen=True):
    """Ask the origin with its own validators; a 304 refreshes the entry (RFC 9111 4.3.1)."""

    entry: CachedResponse
    conditions: dict[str, str]


class Fetch(msgspec.Struct, frozen=True):
    """Go upstream; `stale` is what may still answer if that fails (stale-if-error), or None."""

    stale: CachedResponse | None = None


Decision = Hit | ServeStale | Revalidate | Fetch


def decide(entry: CachedResponse | None, now: float, *, revalidate: bool = False, validators: bool = True) -> Decision:
    """`revalidate`: the client (where the rule honours it) asked past the cache; `validators`: the fill can carry
    the origin's conditions (a batch call cannot)."""
    if entry is None:
        return Fetch()
    if not revalidate:
        st = state(entry, now)
        if st is State.FRESH:
            return Hit(entry)
        if st is State.STALE_REVALIDATE:
            return ServeStale(entry)
    if validators and (conditions := revalidation_headers(CIMultiDict(entry.headers))):
        return Revalidate(entry, conditions)
    return Fetch(entry)
