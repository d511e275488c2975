"""Entries in Redis: read, written with their tag and route indexes in one script, and purged by key, tag,
route or all."""

from __future__ import annotations

import re
from typing import Final

from redis.asyncio.cluster import RedisCluster

from proxy.cache.events import Selector
from proxy.cache.redis.client import RedisClient
from proxy.cache.redis.keyspace import Keyspace, entry_hash
from proxy.cache.redis.pipelining import Call, SameTurn, per_turn, run_script
from proxy.policy.entry import CachedResponse, decode, encode

PURGE_TIMEOUT: Final = 5.0  # a purge may touch many keys; it runs for an operator, never inside a client request

# Entry, its tag and route sets, the lease release and the event, in one atomic round trip.
SET: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local px = tonumber(ARGV[2])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
PURGE_SET: Final = """
local gone = {}
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('DEL', ARGV[1] .. h) == 1 then gone[#gone + 1] = h end
end
redis.call('DEL', KEYS[1])
return gone
"""


class Entries:
    """Stored answers under the keyspace's names; every command through the client's guarded call."""

    def __init__(self, client: RedisClient, keys: Keyspace) -> None:
        self.client, self.keys = client, keys
        self._set = client.redis.register_script(SET)
        self._purge_set = client.redis.register_script(PURGE_SET)
        self._gets: SameTurn[str, CachedResponse | None] = SameTurn(
            lambda keys: self.get_many(keys, commands=len(keys)))
        self._write = per_turn(client.redis, self._set_one, self._set_many)  # a loop turn's writes: one pipeline

    async def get(self, key: str) -> CachedResponse | None:
        """The stored entry (of this format version), or None; the GETs of one loop turn are one MGET."""
        return await self._gets(key)

    async def get_many(self, keys: list[str], *, commands: int = 1) -> list[CachedResponse | None]:
        """The stored entries of keys, in order, in one MGET (one round trip, one timeout, however many keys).
        `commands`: how many calls it answers, each counted should it fail (one, or every GET of a loop turn)."""
        if not keys:
            return []
        names = [self.keys.entry(entry_hash(k)) for k in keys]
        redis = self.client.redis
        if isinstance(redis, RedisCluster):  # one MGET per slot, pipelined per node, in the order asked
            data = await self.client.call("MGET", lambda: redis.mget_nonatomic(names), commands=commands)
        else:
            data = await self.client.call("MGET", lambda: redis.mget(names), commands=commands)
        return [decode(d) if isinstance(d, bytes) else None for d in data]

    async def set(self, key: str, entry: CachedResponse, *, now: float, event: bytes, token: str = "") -> bool:
        """Store with PX = what is left of ttl + stale window, index it by tags and route, release the lease
        `token` holds and publish `event`. False when the entry is already past every window."""
        px = int((entry.keep_until - now) * 1000)
        if px <= 0:
            return False
        h = entry_hash(key)
        b = self.keys.bucket(h)  # one slot for everything this script names (keyspace.py)
        sets = [self.keys.tag(t, b) for t in entry.tags] + ([self.keys.route(entry.route, b)] if entry.route else [])
        names = [self.keys.entry(h), self.keys.lease(h), *sets]
        args: list[bytes | str | int] = [encode(entry), px, h, token, self.keys.channel, event]
        await self._write((names, args))
        return True

    async def _set_one(self, write: Call) -> None:
        names, args = write
        await self.client.call("SET", lambda: self._set(keys=names, args=args))

    async def _set_many(self, writes: list[Call]) -> list[None]:
        redis = self.client.redis
        assert not isinstance(redis, RedisCluster)
        await self.client.call("SET", lambda: run_script(redis, self._set, writes), commands=len(writes))
        return [None] * len(writes)

    async def purge(self, selector: Selector) -> frozenset[str]:
        """Delete the selected entries; returns their hashes. Only keys under our prefix are ever touched."""
        if selector.kind == "key":
            h = entry_hash(selector.value)
            n = await self.client.call("PURGE", lambda: self.client.redis.delete(self.keys.entry(h)), PURGE_TIMEOUT)
            return frozenset({h} if n else ())
        if selector.kind in ("tag", "route"):
            return await self.client.call("PURGE", lambda: self._purge_index(selector), PURGE_TIMEOUT)
        return await self.client.call("PURGE", self._purge_all, PURGE_TIMEOUT)

    async def _purge_index(self, selector: Selector) -> frozenset[str]:
        """The purge script on the index in every bucket (one on a single server): each run stays in one slot."""
        name = self.keys.tag if selector.kind == "tag" else self.keys.route
        redis = self.client.redis
        if not isinstance(redis, RedisCluster):
            gone = await self._purge_set(keys=[name(selector.value)], args=[self.keys.entry_prefix()])
            return frozenset(h.decode() for h in gone)
        pipe = redis.pipeline()  # grouped by node: one round trip per shard, whatever the number of buckets
        for b in self.keys.buckets():
            pipe.eval(PURGE_SET, 1, name(selector.value, b), self.keys.entry_prefix(b))
        return frozenset(h.decode() for gone in await pipe.execute() for h in gone)

    async def _purge_all(self) -> frozenset[str]:
        """Every name under the prefix but the leases (a fill in flight keeps its lease); SCAN visits every
        primary of a cluster, and UNLINK is split by slot."""
        entry, lease = f"{self.keys.prefix}:entry:".encode(), f"{self.keys.prefix}:lease:".encode()
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.keys.prefix) + ":*"
        doomed = [n async for n in self.client.redis.scan_iter(match=pattern, count=500) if not n.startswith(lease)]
        for i in range(0, len(doomed), 500):
            await self.client.redis.unlink(*doomed[i:i + 500])
        return frozenset(n.rpartition(b":")[2].decode() for n in doomed if n.startswith(entry))
