"""An LRU kept beside the memory tier, for what the hit path derives from its entries (a rule's echoed bodies,
the fast lane's kept answers): bounded by count and by bytes, its bytes reserved in the tier's budget, so that
`max_bytes` still bounds the cache's memory as a whole."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReservedLRU(Generic[K, V]):
    """Least recently used out first; `reserve` is the memory tier's (a negative size gives bytes back)."""

    def __init__(self, reserve: Callable[[int], None], max_bytes: int, max_items: int) -> None:
        self._reserve, self.max_bytes, self.max_items = reserve, max_bytes, max_items
        self._kept: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: K) -> V | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        self._kept.move_to_end(key)
        return kept[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """Keep `value`, counted as `size` bytes, in place of any value under `key`; False (nothing kept) when it
        alone exceeds the whole budget. The least recently used go first to make room."""
        self.drop(key)
        if size > self.max_bytes:
            return False
        while self._kept and (len(self._kept) >= self.max_items or self.bytes + size > self.max_bytes):
            self.drop(next(iter(self._kept)))
        self._kept[key] = (value, size)
        self.bytes += size
        self._reserve(size)
        return True

    def drop(self, key: K) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.bytes -= kept[1]
            self._reserve(-kept[1])

    def clear(self) -> None:
        self._kept.clear()
        self._reserve(-self.bytes)
        self.bytes = 0
