"""The memory tier: LRU by count and bytes, a per-entry cap, lazy expiry."""

from __future__ import annotations

from proxy.cache.memory import MemoryTier
from proxy.policy.entry import CachedResponse


def entry(size: int = 10, ttl: float = 60, sie: float = 0) -> CachedResponse:
    return CachedResponse(status=200, headers=[], body=b"x" * size, stored_at=1000.0, ttl=ttl, stale_if_error=sie)


def tier(now: list[float], **kw: int) -> MemoryTier:
    limits = {"max_entries": 3, "max_bytes": 10_000, "max_entry_bytes": 1_000, **kw}
    return MemoryTier(clock=lambda: now[0], **limits)


def test_least_recently_used_goes_first_when_count_is_full() -> None:
    now = [1000.0]
    t = tier(now)
    for k in "abc":
        t.set(k, entry())
    assert t.get("a") is not None  # a is now the most recent
    t.set("d", entry())
    assert [k for k, _ in t.items()] == ["c", "a", "d"]
    assert t.evictions == 1


def test_byte_bound_evicts_until_it_fits_and_tracks_bytes() -> None:
    now = [1000.0]
    t = tier(now, max_entries=100, max_bytes=1000)
    for k in "abcd":
        t.set(k, entry(size=300))
    assert len(t) == 2 and t.bytes == 2 * (300 + 128 + 1)  # the one-letter key counts too (issue 12.6)
    t.delete("c")
    assert t.bytes == 300 + 128 + 1
    t.clear()
    assert (len(t), t.bytes) == (0, 0)


def test_oversized_entry_is_refused_and_replaces_nothing() -> None:
    now = [1000.0]
    t = tier(now)
    t.set("a", entry())
    assert t.set("a", entry(size=5000)) is False
    assert t.get("a") is None  # the old copy is gone too: never serve a version older than the origin's last word
    assert t.bytes == 0


def test_entries_expire_lazily_after_their_last_stale_window() -> None:
    now = [1000.0]
    t = tier(now)
    t.set("a", entry(ttl=60, sie=60))
    now[0] = 1100.0
    assert t.get("a") is not None  # stale but usable if the upstream fails
    now[0] = 1120.0
    assert t.get("a") is None
    assert (len(t), t.bytes) == (0, 0)


def test_long_keys_and_reserved_bytes_count_against_the_byte_budget() -> None:
    now = [1000.0]
    t = tier(now, max_entries=100, max_bytes=10_000)
    t.set("k" * 4000, entry(size=100))
    assert t.bytes == 100 + 128 + 4000
    t.reserve(6000)  # what the handler's request-target memo keeps
    assert len(t) == 0 and t.evictions == 1  # over budget: the entry goes, not the process's memory
    t.reserve(-6000)
    assert t.reserved == 0
