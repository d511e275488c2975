"""The cache as the handler sees it: memory first, then Redis, written through to both, coherent across processes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Final, TypeVar

from proxy.cache.events import Filled, Purged, Selector, decode_event, encode_event
from proxy.cache.lease import Fetch, Lease, LeaseCoalescer
from proxy.cache.memory import MemoryTier
from proxy.cache.redis.keyspace import entry_hash
from proxy.cache.redis.tier import RedisTier
from proxy.concurrency.coalescer import Coalescer
from proxy.errors import CacheBackendError
from proxy.policy.entry import CachedResponse
from proxy.policy.keys import variant_key
from proxy.telemetry.log_throttle import LogThrottle

log = logging.getLogger("sidecache")
V = TypeVar("V")

MAX_PENDING_WRITES: Final = 512  # Redis writes in flight; past this a write is dropped (counted), never queued
RECENT_PURGES: Final = 1024  # purges remembered, so a fill that began before one does not store what it removed
SUPERSEDED: Final = 1024  # copies another process refilled, kept for stale-if-error while Redis cannot answer
Held = tuple[tuple[str, CachedResponse], ...]  # what memory held under each key a lookup looked at


class TieredCache:
    """Read-through memory -> Redis, promote on a Redis hit; writes go to both; purges reach every tier and process.

    The memory lookup is synchronous on purpose: a memory hit costs no await on the hot path. Redis is optional
    (None: memory only) and never fails a call here: its errors are counted by the tier and the cache carries on.
    """

    def __init__(
        self, memory: MemoryTier, clock: Callable[[], float], redis: RedisTier | None = None, *, lease: float = 5.0,
        max_wait: float = 30.0,
    ) -> None:
        """`max_wait`: the longest a request waits on other processes' fetches in all; the upstream read timeout
        fits, since a holder that has not answered by then has failed."""
        self.memory = memory
        self.clock = clock
        self.redis = redis
        self.origin = secrets.token_hex(6)  # this process, so it can skip its own events
        self.dropped_writes = 0
        self.lease = (LeaseCoalescer(redis, lease=lease, max_wait=max_wait, origin=self.origin, clock=clock,
                                     spawn=self._spawn) if redis is not None else None)
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
        self._writes: dict[str, tuple[CachedResponse, asyncio.Task[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._reads: Coalescer[str, CachedResponse | None] = Coalescer()
        self.generation = 0  # bumped by every purge, here or in another process; a fill notes it when it starts
        self._purges: deque[tuple[int, Selector]] = deque(maxlen=RECENT_PURGES)
        # key -> the memory copy another process's fill superseded: the newer one is in Redis, but if Redis cannot
        # give it and the upstream fails too, this older copy is still what stale-if-error may answer with.
        self._superseded: OrderedDict[str, CachedResponse] = OrderedDict()
        self._log = LogThrottle(log)  # every unsafe request purges its URI: one line per interval while Redis is down

    @property
    def degraded(self) -> bool:
        """Redis is configured but the breaker is open: answers come from memory and upstream only."""
        return self.redis is not None and not self.redis.breaker.closed

    def redis_status(self) -> dict[str, object]:
        """For /readyz: the tier as a whole (`status`: the breaker), its mode, and each node known as last PINGed."""
        if self.redis is None:
            return {"status": "not configured"}
        nodes = [{"address": n.address, "role": n.role, "up": n.up} for n in self.redis.nodes]
        return {"status": self.redis.status, "mode": self.redis.mode, "url": self.redis.url,
                "subscribed": self.redis.subscribed, "nodes": nodes}

    async def start(self) -> None:
        if self.redis is None:
            return
        self.redis.on_change.append(self._redis_changed)
        await self.redis.start()
        self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        """Stop listening, give pending writes one timeout to land, then close the Redis client."""
        if self.redis is None:
            return
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
            self._listener = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.redis.timeout * 2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.redis.close()

    def local(self, key: str) -> CachedResponse | None:
        return self.memory.get(key)

    def local_variant(self, key: str, request: Mapping[str, str]) -> tuple[CachedResponse | None, Held]:
        """`find` in memory alone, no await: the entry, or its Vary variant's (None if either is not in memory),
        and what memory held under each key it looked at (the key's entry, or its marker and the variant's)."""
        entry = self.memory.get(key)
        if entry is None or not entry.is_marker:
            return entry, ((key, entry),) if entry is not None else ()
        marker, variant = entry, variant_key(key, entry.vary, request)
        entry = self.memory.get(variant)
        if entry is None or entry.is_marker:
            return None, ()
        return entry, ((key, marker), (variant, entry))

    def still_holds(self, held: Iterable[tuple[str, weakref.ref[CachedResponse]]]) -> bool:
        """Memory holds the very same entries under these keys (each looked up as a hit looks it up: the LRU
        touched, an outlived one dropped); entries are replaced, never changed in place, so nothing else moved."""
        get = self.memory.get
        for key, ref in held:
            entry = ref()
            if entry is None or get(key) is not entry:
                return False
        return True

    async def find(self, key: str, request: Mapping[str, str]) -> CachedResponse | None:
        """The entry for a request: under its key, or, where the key holds a Vary marker, under its variant's key."""
        entry = await self._one(key)
        if entry is not None and entry.is_marker:
            entry = await self._one(variant_key(key, entry.vary, request))
            if entry is not None and entry.is_marker:
                return None
        return entry

    async def find_many(self, keys: list[str], request: Mapping[str, str]) -> dict[str, CachedResponse]:
        """`find` for many keys at once: memory first, then Redis in one round trip (and one more for the variants
        of keys that hold a Vary marker); only the keys found."""
        entries = await self._many(keys)
        markers = {k: variant_key(k, e.vary, request) for k, e in entries.items() if e.is_marker}
        if markers:
            variants = await self._many(list(markers.values()))
            for k, v in markers.items():
                if (found := variants.get(v)) is not None and not found.is_marker:
                    entries[k] = found
                else:
                    del entries[k]
        return entries

    async def _many(self, keys: list[str]) -> dict[str, CachedResponse]:
        entries = {k: e for k in keys if (e := self.memory.get(k)) is not None}  # memory first, no await
        return entries | await self.shared_many([k for k in keys if k not in entries])

    async def _one(self, key: str) -> CachedResponse | None:
        entry = self.memory.get(key) or await self.shared(key)
        if entry is None and (older := self._superseded.get(key)) is not None:
            if older.keep_until > self.clock():
                return older  # Redis did not give the newer copy: the older one, for its stale windows
            del self._superseded[key]
        return entry

    def purged_since(self, generation: int, key: str, entry: CachedResponse) -> bool:
        """A purge that would remove this entry ran after `generation`: a fill begun before it must not store."""
        if generation >= self.generation:
            return False
        oldest = self._purges[0][0] if self._purges else self.generation + 1
        if generation < oldest - 1:
            return True  # older than what is remembered: err on the side of the purge
        return any(g > generation and sel.matches(key, entry) for g, sel in self._purges)

    def _note_purge(self, selector: Selector) -> None:
        self.generation += 1
        self._purges.append((self.generation, selector))

    async def shared(self, key: str) -> CachedResponse | None:
        """Redis's copy, promoted into memory; one GET per key in flight however many requests ask at once."""
        if self.redis is None or not self.redis.breaker.closed:
            return None
        entry, _ = await self._reads.run(key, lambda: self._read(key))
        return entry

    async def shared_many(self, keys: list[str]) -> dict[str, CachedResponse]:
        """Redis's copies of keys in one round trip, promoted into memory like shared(); only the keys found."""
        if self.redis is None or not self.redis.breaker.closed or not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        try:
            entries = await self.redis.get_many(unique)
        except CacheBackendError:
            return {}
        now = self.clock()
        found = {k: e for k, e in zip(unique, entries, strict=True) if e is not None and e.keep_until > now}
        for key, entry in found.items():
            self.memory.set(key, entry)
        return found

    async def _read(self, key: str) -> CachedResponse | None:
        """stored_at travels with the entry, so memory keeps only its remaining TTL (RFC 9111 4.2.3)."""
        assert self.redis is not None
        try:
            entry = await self.redis.get(key)
        except CacheBackendError:
            return None
        if entry is None or entry.keep_until <= self.clock():
            if entry is None:
                self._superseded.pop(key, None)  # Redis answered: there is no newer copy to stand in for
            return None
        self._superseded.pop(key, None)
        self.memory.set(key, entry)
        return entry

    def store(self, key: str, entry: CachedResponse, *, since: int | None = None, lease: Lease | None = None) -> bool:
        """True when the memory tier kept it (it refuses entries over its per-entry cap); Redis is written in the
        background, so the response never waits for it. `since`: the generation the fill began at; a purge since
        then that selects this entry wins, and nothing is stored. `lease`: the one fill_once handed the fetch that
        got this entry; the Redis write releases it (without it, the lease is given back when that fetch ends)."""
        if since is not None and self.purged_since(since, key, entry):
            return False
        if not self.memory.set(key, entry):
            return False
        if self.redis is not None and self.redis.breaker.closed:
            if len(self._writes) >= MAX_PENDING_WRITES:
                self.dropped_writes += 1
            else:
                token = lease.take(key) if lease is not None else ""
                task = self._spawn(self._write(key, entry, token))
                self._writes[key] = (entry, task)
        return True

    async def fill_once(self, key: str, fill: Fetch[V], adopt: Callable[[CachedResponse], V]) -> V:
        """fill(lease) once across every process sharing Redis; the others adopt() what it stored (promoted here).
        fill passes its lease on to `store(key, entry, lease=lease)`; it is None without Redis or a lease."""
        if self.lease is None:
            return await fill(None)

        def promote(entry: CachedResponse) -> V:
            self.memory.set(key, entry)
            return adopt(entry)

        return await self.lease.run(key, fill, promote)

    async def purge(self, selector: Selector) -> int:
        """Remove what the selector selects from memory, Redis and every other process's memory; returns the count."""
        self._note_purge(selector)
        gone = {entry_hash(k) for k in self._drop(selector)}  # hashes: Redis names entries by them
        for key, (entry, task) in list(self._writes.items()):
            if selector.matches(key, entry):
                task.cancel()  # a write still in flight must not bring a purged entry back
                del self._writes[key]
        if self.redis is None:
            return len(gone)
        if not self.redis.breaker.closed:
            self._log.warning(("purge-local", selector.kind), "purge %s reached this process's memory only: %s is down",
                              selector, self.redis.url)
            return len(gone)
        try:
            gone |= await self.redis.purge(selector)
            await self.redis.publish(encode_event(Purged(self.origin, selector)))
        except CacheBackendError as exc:
            self._log.warning(("purge-failed", selector.kind),
                              "purge %s may not have reached Redis or the other processes: %s", selector, exc)
        # Another process's write may still be on its way to Redis: once the longest a write can take has passed,
        # purge Redis once more, so the entry it brings back goes too.
        self._spawn(self._purge_again(selector))
        return len(gone)

    async def _purge_again(self, selector: Selector) -> None:
        assert self.redis is not None
        await asyncio.sleep(self.redis.timeout * 2)
        try:
            await self.redis.purge(selector)
        except CacheBackendError:
            return  # counted by the tier

    def _drop(self, selector: Selector) -> list[str]:
        for key, older in list(self._superseded.items()):
            if selector.matches(key, older):
                del self._superseded[key]
        if selector.kind == "key":  # one entry: no scan (every unsafe request invalidates its URI this way)
            return [selector.value] if self.memory.delete(selector.value) else []
        doomed = [k for k, e in self.memory.items() if selector.matches(k, e)]
        for k in doomed:
            self.memory.delete(k)
        return doomed

    async def _write(self, key: str, entry: CachedResponse, token: str) -> None:
        assert self.redis is not None
        event = encode_event(Filled(self.origin, key))
        try:
            await self.redis.set(key, entry, now=self.clock(), event=event, token=token)
        except CacheBackendError:
            if self.lease is not None:
                self.lease.owe(key, token)  # the script that would have released it did not run
            return  # counted by the tier; the breaker decides when to stop trying
        finally:
            current = self._writes.get(key)
            if current is not None and current[1] is asyncio.current_task():
                del self._writes[key]

    async def _listen(self) -> None:
        """Apply other processes' events for the life of the cache, resubscribing whenever Redis comes back."""
        assert self.redis is not None
        while True:
            await self.redis.wait_up()
            try:
                await self.redis.listen(self._on_event)
            except CacheBackendError:  # counted by the tier; resubscribe once it is up again
                if self.lease is not None:
                    self.lease.notify_all()  # an event meanwhile would be lost: lease waiters look again now
            await asyncio.sleep(self.redis.breaker.probe_min)  # no busy loop if only subscribing fails

    def _on_event(self, data: bytes) -> None:
        event = decode_event(data)
        if event is None or event.origin == self.origin:
            return
        if isinstance(event, Purged):
            self._note_purge(event.selector)
            self._drop(event.selector)
            for key, (entry, task) in list(self._writes.items()):
                if event.selector.matches(key, entry):
                    task.cancel()  # this process's write in flight must not bring the purged entry back
                    del self._writes[key]
            return
        if isinstance(event, Filled):
            # The next request here reads the newer copy from Redis. A lease waiter woken below adopts it
            # after this drop, never before, so the drop cannot undo its promotion.
            if (older := self.memory.pop(event.key)) is not None:
                self._superseded[event.key] = older
                self._superseded.move_to_end(event.key)
                if len(self._superseded) > SUPERSEDED:
                    self._superseded.popitem(last=False)
        if self.lease is not None:
            self.lease.notify(event.key)

    def _redis_changed(self, up: bool) -> None:
        if not up and self.lease is not None:
            self.lease.notify_all()

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background cache task failed: %r", exc)
