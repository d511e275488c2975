"""The in-process tier: an LRU bounded by entry count and by bytes, expiring lazily on read.

The byte budget counts everything the hit path keeps per key: the entry, its key, and what others reserve (the
handler's memo of request targets), so `max_bytes` bounds the process's cache memory, not just the bodies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from proxy.policy.entry import CachedResponse


class MemoryTier:
    """LRU of CachedResponse; no background sweep, so the hit path never waits on housekeeping."""

    def __init__(self, *, max_entries: int, max_bytes: int, max_entry_bytes: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._data: OrderedDict[str, CachedResponse] = OrderedDict()
        self.bytes = 0
        self.reserved = 0  # bytes others keep per key (the request-target memo), counted against max_bytes
        self.evictions = 0
        # Told of each entry dropped for age on a lookup (that lookup then misses): the stats count TTL misses.
        self.on_expired: Callable[[CachedResponse, float], None] | None = None

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> CachedResponse | None:
        """The entry while any window can still use it; an older one is dropped here."""
        entry = self._data.get(key)
        if entry is None:
            return None
        now = self._clock()
        if entry.keep_until <= now:
            self._drop(key)
            if self.on_expired is not None:
                self.on_expired(entry, now)
            return None
        self._data.move_to_end(key)
        return entry

    def set(self, key: str, entry: CachedResponse) -> bool:
        """Store unless the entry alone exceeds the per-entry cap; evict least recently used to fit."""
        size = entry.size + len(key)
        if entry.size > self.max_entry_bytes or size > self.max_bytes:
            self.delete(key)
            return False
        self._drop(key)
        self._data[key] = entry
        self.bytes += size
        self._fit()
        return True

    def reserve(self, size: int) -> None:
        """Count `size` bytes kept elsewhere for cached keys (negative to give them back); evicts to fit."""
        self.reserved = max(0, self.reserved + size)
        self._fit()

    def pop(self, key: str) -> CachedResponse | None:
        """Remove and return an entry, whatever its age."""
        entry = self._data.get(key)
        if entry is not None:
            self._drop(key)
        return entry

    def _fit(self) -> None:
        while self._data and (len(self._data) > self.max_entries or self.bytes + self.reserved > self.max_bytes):
            oldest = next(iter(self._data))
            self._drop(oldest)
            self.evictions += 1

    def resize(self, *, max_entries: int, max_bytes: int, max_entry_bytes: int) -> None:
        """New bounds from a reloaded config; evicts least recently used entries until they fit."""
        self.max_entries, self.max_bytes, self.max_entry_bytes = max_entries, max_bytes, max_entry_bytes
        self._fit()

    def delete(self, key: str) -> bool:
        return self._drop(key)

    def clear(self) -> int:
        n = len(self._data)
        self._data.clear()
        self.bytes = 0
        return n

    def items(self) -> Iterator[tuple[str, CachedResponse]]:
        return iter(list(self._data.items()))

    def _drop(self, key: str) -> bool:
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry.size + len(key)
        return True
