"""Replays: a fast-lane answer kept by the exact bytes of the request it answered, and written again while nothing
it was decided from has changed.

The decision is pure. The same request bytes (target, method, every header), the same stored entries, the same
rules and Redis state, and the same whole seconds of Age and ttl give the same answer, byte for byte. So a hit's
encoded answer is kept with what it was decided from (its `Basis`). A later chunk that is those very bytes is
answered with it once the handler has checked each part of the basis; it is counted like any other hit (metrics,
access log, the memory tier's LRU). The chunk is not even parsed then: it is one whole request, the same one.

    chunk ─ kept? ─> handler.replayed(basis): the same entries in memory, before `until`, Redis as it was ─> write
              └ no, or anything changed (dropped) ─> parsed and answered as every chunk is (fast_lane.py)

Bounded by count and bytes, which are counted in the memory tier's budget; entries are held weakly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Final

from proxy.cache.reserved import ReservedLRU
from proxy.policy.entry import CachedResponse

MAX_REPLAYS: Final = 4096
_OVERHEAD: Final = 300  # bytes a kept answer costs besides its request and answer bytes (dict slot, basis)


class Basis:
    """What a fresh memory hit was decided from, and what its replay counts (as the handler's exit step would)."""

    __slots__ = ("held", "until", "degraded", "second", "method", "raw_path", "route", "cache_status", "status",
                 "size")

    def __init__(self, held: tuple[tuple[str, CachedResponse], ...], until: float, degraded: bool, second: int,
                 method: str, raw_path: str, route: str, cache_status: str, status: int, size: int) -> None:
        # (key, what the memory tier held under it) for each lookup: the key's entry, or its Vary marker and then
        # the variant's entry. Weakly: a replay never keeps an entry alive that the tier has let go.
        self.held = tuple((key, weakref.ref(entry)) for key, entry in held)
        self.until = until  # by the cache's clock: the instant Age, the ttl or freshness would first change
        self.degraded = degraded  # Redis's breaker was open: the Cache-Status says so
        self.second = second  # the wall second, when the answer's Date was ours (0: the origin's Date, stored)
        self.method, self.raw_path, self.route, self.cache_status = method, raw_path, route, cache_status
        self.status, self.size = status, size  # for the access log: status and body bytes sent


class Replays(ReservedLRU[bytes, tuple[bytes, Basis]]):
    """The kept answers by request bytes, least recently replayed first out (cache/reserved.py)."""

    def __init__(self, reserve: Callable[[int], None], max_bytes: int) -> None:
        super().__init__(reserve, max_bytes, MAX_REPLAYS)
        self.replayed = 0  # answers written again

    def keep(self, request: bytes, answer: bytes, basis: Basis) -> None:
        self.put(request, (answer, basis), len(request) + len(answer) + _OVERHEAD)
