"""The fill lease's Redis side: taken with SET NX (reading the entry in the same round trip), checked, given back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from proxy.cache.redis.client import RedisClient
from proxy.cache.redis.keyspace import Keyspace, entry_hash
from proxy.cache.redis.pipelining import Call, per_turn, run_script
from proxy.policy.entry import CachedResponse, decode

# The entry as it is now, and the lease if nobody holds it (else how long the holder still has).
ACQUIRE: Final = """
local entry = redis.call('GET', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {entry, 1, 0} end
return {entry, 0, redis.call('PTTL', KEYS[2])}
"""
# Delete the lease only if it is still ours: after a lapse it may belong to the process that took over.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""


_Ask = tuple[str, str, int]  # key, token, lease in ms


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease request's answer: the current entry if any, whether we hold the lease, and the holder's time left."""

    entry: CachedResponse | None
    acquired: bool
    lease_left: float  # seconds; 0 when acquired


class Leases:
    """One lease per cache key, named beside its entry (the release itself rides on the entry's write script)."""

    def __init__(self, client: RedisClient, keys: Keyspace) -> None:
        self.client, self.keys = client, keys
        self._acquire = client.redis.register_script(ACQUIRE)
        self._release = client.redis.register_script(RELEASE)
        self._ask = per_turn(client.redis, self._acquire_one, self._acquire_many)  # a loop turn's: one pipeline

    async def acquire(self, key: str, token: str, lease_ms: int) -> Claim:
        """SET lease NX PX, reading the entry in the same round trip (it may have been filled meanwhile); the
        leases asked for in one loop turn go in one pipeline."""
        ask = (key, token, lease_ms)
        data, got, left = await self._ask(ask)
        entry = decode(data) if isinstance(data, bytes) else None
        return Claim(entry, bool(got), max(0, int(left)) / 1000)

    def _script(self, ask: _Ask) -> Call:
        key, token, lease_ms = ask
        h = entry_hash(key)
        return [self.keys.entry(h), self.keys.lease(h)], [token, lease_ms]

    async def _acquire_one(self, ask: _Ask) -> list[Any]:
        names, args = self._script(ask)
        got: list[Any] = await self.client.call("LEASE", lambda: self._acquire(keys=names, args=args))
        return got

    async def _acquire_many(self, asks: list[_Ask]) -> list[list[Any]]:
        redis = self.client.redis
        assert not isinstance(redis, RedisCluster)
        calls = [self._script(a) for a in asks]
        return await self.client.call("LEASE", lambda: run_script(redis, self._acquire, calls), commands=len(calls))

    async def left(self, key: str) -> float:
        """Seconds left on whoever holds key's lease; 0 when nobody does."""
        left = await self.client.call("PTTL", lambda: self.client.redis.pttl(self.keys.lease(entry_hash(key))))
        return max(0, int(left)) / 1000

    async def release(self, key: str, token: str, event: bytes = b"") -> None:
        """Give the lease back if it is still ours, and publish `event` (if any) for the waiters."""
        name = self.keys.lease(entry_hash(key))
        await self.client.call("RELEASE", lambda: self._release(keys=[name], args=[token, self.keys.channel, event]))
