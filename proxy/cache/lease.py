"""Single flight across processes: a Redis lease per key; the holder fetches, the others wait to be told."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Final, TypeVar

from proxy.cache.events import Released, encode_event
from proxy.cache.redis.tier import RedisTier
from proxy.errors import CacheBackendError
from proxy.policy.entry import CachedResponse

V = TypeVar("V")

_GRACE: Final = 0.05  # past the holder's lease before looking again: its last event may still be on the wire
_ROUNDS: Final = 4  # takeovers before giving up on the lease and fetching regardless
_CHECK: Final = 0.1  # while waiting, how often to ask Redis whether the holder's lease is still there
MAX_OWED: Final = 4096  # leases remembered for a late release; past it the rest lapse by themselves


@dataclass(slots=True)
class Lease:
    """A key's fill lease this process holds, handed to the fetch that fills it; the store that writes the entry
    takes the token (its write script releases the lease), else the lease is given back when the fetch ends."""

    key: str
    token: str
    taken: bool = False

    def take(self, key: str) -> str:
        """The token, for the write of key that releases the lease; empty for any other key or a second write."""
        if self.taken or key != self.key:
            return ""
        self.taken = True
        return self.token


Fetch = Callable[[Lease | None], Awaitable[V]]


class LeaseCoalescer:
    """Runs after the in-process Coalescer, so each process asks for a key's lease at most once at a time.

    The holder fetches with its `Lease` in hand; its store (`TieredCache.store(key, entry, lease=lease)`) writes
    the entry, releases the lease and publishes a `Filled` event in one script. Others wait for that event
    (pub/sub) for at most the time left on the lease, then look again: a fresh entry is adopted; a lapsed lease is
    taken over. Redis failing is not an error, and its silence looks the same as a holder still fetching, so a
    waiter also checks the lease every `_CHECK` under the call timeout: a failed check sends it to fetch at once, a
    vanished lease to look again. Without a healthy Redis, everyone just fetches; nobody waits on other processes
    longer than `max_wait` in all.
    """

    def __init__(
        self,
        redis: RedisTier,
        *,
        lease: float,
        max_wait: float,
        origin: str,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[object, object, None]], object],
    ) -> None:
        self.redis = redis
        self.lease_ms = max(1, int(lease * 1000))
        self.max_wait = max_wait
        self.origin = origin
        self.clock = clock
        self._spawn = spawn
        self._held = 0  # leases this process holds and has not handed to a store or given back
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # key -> (token, loop time it lapses) of leases whose release Redis did not take: given back once it answers
        self._owed: dict[str, tuple[str, float]] = {}
        self._settling = False

    def __len__(self) -> int:
        return self._held

    def notify(self, key: str) -> None:
        """An event about key arrived: whoever waits on it looks again."""
        for waiter in self._waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    def notify_all(self) -> None:
        """Redis went down, or the events stopped: nobody should wait for an event that may never come."""
        for key in list(self._waiters):
            self.notify(key)

    async def run(self, key: str, fetch: Fetch[V], adopt: Callable[[CachedResponse], V]) -> V:
        """fetch(lease) under the key's lease, or adopt() the entry another process stored meanwhile; fetch(None)
        when no lease could be had (Redis unhealthy, or waiting took too long)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.max_wait  # loop time, as asyncio's timeouts: self.clock dates entries only
        for _ in range(_ROUNDS):
            if not self.redis.breaker.healthy:
                return await fetch(None)
            token = secrets.token_hex(8)
            waiter = self._wait(key)  # before asking, so an event that lands in between is not lost
            try:
                try:
                    claim = await self.redis.acquire(key, token, self.lease_ms)
                except CacheBackendError:
                    return await fetch(None)
                if claim.entry is not None and claim.entry.expires_at > self.clock():
                    if claim.acquired:
                        self._spawn(self._give_back(key, token, notify=False))
                    return adopt(claim.entry)
                if claim.acquired:
                    return await self._hold(key, token, fetch)
                try:
                    await self._watch(key, waiter, min(loop.time() + claim.lease_left + _GRACE, give_up))
                except CacheBackendError:
                    return await fetch(None)  # counted by the tier; whatever the holder stores may never reach us
            finally:
                self._unwait(key, waiter)
            if loop.time() >= give_up:
                break
        return await fetch(None)

    async def _watch(self, key: str, waiter: asyncio.Future[None], until: float) -> None:
        """Return on an event about key, once the holder's lease is gone, or at `until`; CacheBackendError when a
        check fails (a hung Redis looks like a holder still fetching, so its silence is never waited out)."""
        loop = asyncio.get_running_loop()
        while (left := until - loop.time()) > 0:
            done, _ = await asyncio.wait([waiter], timeout=min(_CHECK, left))
            if done or await self.redis.lease_left(key) == 0:
                return

    async def _hold(self, key: str, token: str, fetch: Fetch[V]) -> V:
        lease = Lease(key, token)
        self._held += 1
        try:
            return await fetch(lease)
        finally:
            self._held -= 1
            if not lease.taken:  # nothing was stored: tell the waiters to fetch for themselves
                lease.taken = True  # a store after this must not release a lease given back (maybe taken over)
                self._spawn(self._give_back(key, token, notify=True))

    async def _give_back(self, key: str, token: str, *, notify: bool) -> None:
        event = encode_event(Released(self.origin, key)) if notify else b""
        try:
            await self.redis.release(key, token, event)
        except CacheBackendError:
            self.owe(key, token)  # counted by the tier

    def owe(self, key: str, token: str) -> None:
        """A lease whose release (or releasing store) failed: give it back as soon as Redis answers again, rather
        than make other processes wait out the whole lease for a fill that is over."""
        if not token or (len(self._owed) >= MAX_OWED and key not in self._owed):
            return
        self._owed[key] = (token, asyncio.get_running_loop().time() + self.lease_ms / 1000)
        if not self._settling:
            self._settling = True
            self._spawn(self._settle())

    async def _settle(self) -> None:
        """Every `probe_min`, release what is owed (only where the lease is still ours: the script checks), until
        nothing is, or what is left has lapsed anyway."""
        loop = asyncio.get_running_loop()
        try:
            while self._owed:
                await asyncio.sleep(self.redis.breaker.probe_min)
                for key, (token, lapses) in list(self._owed.items()):
                    if lapses > loop.time():
                        try:
                            await self.redis.release(key, token)
                        except CacheBackendError:
                            break  # still away: all of them wait for the next round
                    if self._owed.get(key, ("", 0.0))[0] == token:
                        del self._owed[key]
        finally:
            self._settling = False

    def _wait(self, key: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(waiter)
        return waiter

    def _unwait(self, key: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[key]
