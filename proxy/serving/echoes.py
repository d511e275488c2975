"""Echoed bodies, made once: a rule's `echo` writes each caller's own ids into a shared stored body, so the answer
differs per caller and cannot carry the gzip copy made when the entry was stored. The echoed body, its ETag and
its gzip copy are kept per entry and per echoed values, in a bounded LRU whose bytes count against the memory
tier's budget, so a prop asked again (by another user, or on a reload) costs a lookup, and gzip runs once per
(entry, ids), never per hit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from proxy.cache.reserved import ReservedLRU
from proxy.config.rules import CompiledRule, field_value
from proxy.policy.encoding import compressible, gzipped
from proxy.policy.entry import CachedResponse
from proxy.policy.validators import derived_etag
from proxy.serving.answer import echo
from proxy.serving.inbound import Inbound

MAX_ECHOES: Final = 4096  # echoed bodies kept
_OVERHEAD: Final = 200  # bytes an echoed body costs besides its own (the slot, its key, the tuple)


@dataclass(frozen=True, slots=True)
class Echoed:
    """One caller's body cut from a shared entry, with its own ETag and gzip copy (b"" when not worth one)."""

    entry: weakref.ref[CachedResponse]  # so that the id in the memo's key is never another entry's; not held
    body: bytes
    etag: str
    gzip: bytes


class Echoes:
    """The echoed bodies by entry and echoed values, least recently used first out (cache/reserved.py)."""

    def __init__(self, reserve: Callable[[int], None], max_bytes: int, max_items: int = MAX_ECHOES) -> None:
        self._kept: ReservedLRU[tuple[int, tuple[str, ...]], Echoed] = ReservedLRU(reserve, max_bytes, max_items)

    def get(self, entry: CachedResponse, rule: CompiledRule, inb: Inbound) -> Echoed:
        ids = tuple(str(field_value(f, inb.params, inb.query, inb.headers)) for f in rule.echo)
        slot = (id(entry), ids)
        got = self._kept.get(slot)
        if got is not None and got.entry() is entry:
            return got
        body = echo(entry.body, rule, inb)
        if len(body) + _OVERHEAD > self._kept.max_bytes // 4:  # too large to keep: no gzip copy, made per hit
            return Echoed(weakref.ref(entry), body, derived_etag(body), b"")
        # only where the stored body said so at store time (and `Vary: Accept-Encoding` with it)
        packed = gzipped(body, entry.headers) if compressible(entry.body, entry.headers) else b""
        got = Echoed(weakref.ref(entry), body, derived_etag(body), packed)
        self._kept.put(slot, got, len(body) + len(packed) + _OVERHEAD)
        return got
