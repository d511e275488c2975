"""The cache as the handler sees it: memory first, then the shared tier, written through to both."""

from __future__ import annotations

from collections.abc import Callable

from .entry import CachedResponse
from .memory_tier import MemoryTier


class TieredCache:
    """Read-through memory -> shared tier, promote on a shared hit; purges reach every tier.

    The memory lookup is synchronous on purpose: a memory hit costs no await on the hot path.
    """

    def __init__(self, memory: MemoryTier, clock: Callable[[], float]) -> None:
        self.memory = memory
        self.clock = clock

    def local(self, key: str) -> CachedResponse | None:
        return self.memory.get(key)

    async def shared(self, key: str) -> CachedResponse | None:
        """The shared tier's copy (None until the Redis tier is configured)."""
        return None

    def store(self, key: str, entry: CachedResponse) -> bool:
        """True when the memory tier kept it (it refuses entries over its per-entry cap)."""
        return self.memory.set(key, entry)

    async def purge(self, match: Callable[[str, CachedResponse], bool]) -> int:
        """Remove every entry the predicate selects; returns how many were removed."""
        doomed = [k for k, e in self.memory.items() if match(k, e)]
        for k in doomed:
            self.memory.delete(k)
        return len(doomed)
