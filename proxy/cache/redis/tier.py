"""The shared tier on redis.asyncio: entries, tag sets, leases, events; RedisError -> CacheBackendError here only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from proxy.cache.events import Selector
from proxy.concurrency.breaker import Breaker
from proxy.config.settings import RedisConfig
from proxy.errors import CacheBackendError, ConfigError
from proxy.policy.entry import CachedResponse, decode, encode

log = logging.getLogger("sidecache")
T = TypeVar("T")

PURGE_TIMEOUT: Final = 5.0  # a purge may touch many keys; it runs for an operator, never inside a client request
STARTUP_TIMEOUT: Final = 1.0  # connecting the pool before the listener opens; no client is waiting yet
_FAILURES: Final = (RedisError, OSError, TimeoutError)
_USERINFO: Final = re.compile(r"(://[^:@/?#]*:)([^@/?#]*)@")
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)([^&#]*)")

# Entry, its tag and route sets, the lease release and the event, in one atomic round trip.
_SET: Final = """
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
# The entry as it is now, and the lease if nobody holds it (else how long the holder still has).
_ACQUIRE: Final = """
local entry = redis.call('GET', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {entry, 1, 0} end
return {entry, 0, redis.call('PTTL', KEYS[2])}
"""
# Delete the lease only if it is still ours: after a lapse it may belong to the process that took over.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""
_PURGE_SET: Final = """
local gone = {}
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('DEL', ARGV[1] .. h) == 1 then gone[#gone + 1] = h end
end
redis.call('DEL', KEYS[1])
return gone
"""


def redact(url: str) -> str:
    """The URL with its password (user-info or `?password=`) shown as ***: safe for logs, errors and /readyz."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


def entry_hash(key: str) -> str:
    """Redis key suffix for a cache key: fixed length, and no user text in key names."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease request's answer: the current entry if any, whether we hold the lease, and the holder's time left."""

    entry: CachedResponse | None
    acquired: bool
    lease_left: float  # seconds; 0 when acquired


class RedisTier:
    """One redis.asyncio client with a bounded pool (plus one subscriber connection), behind a circuit breaker.

    Every call has the configured timeout; every redis or socket error leaves as CacheBackendError, is counted in
    `errors`, and feeds the breaker. While the breaker is open no call is made; a prober PINGs with backoff.
    """

    def __init__(self, config: RedisConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = redact(config.url)
        secrets: set[str] = set()
        for m in (_USERINFO.search(config.url), _QUERY_PASSWORD.search(config.url)):
            if m and m.group(2):
                secrets |= {m.group(2), unquote(m.group(2))}
        self._secrets = sorted(secrets, key=len, reverse=True)  # longest first, so no part of one is left showing
        self.timeout = float(config.timeout)
        self.pool_size = config.pool_size
        self.prefix = config.prefix
        self.channel = f"{config.prefix}:events"
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.subscribed = False
        self.on_change: list[Callable[[bool], None]] = []
        self.breaker = Breaker(failures=config.breaker_failures, probe_min=config.probe_min,
                               probe_max=config.probe_max, clock=clock, on_change=self._changed)
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._stale = False  # the breaker opened: pooled connections may be dead, drop them before probing
        self._closed = False
        # Each call's own asyncio timeout bounds it, connecting included (a cancelled connect goes back to the pool);
        # the socket timeout only backs that up, so the start-up connects get their longer budget.
        try:
            self._pool = aioredis.BlockingConnectionPool.from_url(
                config.url, max_connections=config.pool_size, timeout=self.timeout,
                socket_connect_timeout=STARTUP_TIMEOUT)
            self._sub_pool = aioredis.BlockingConnectionPool.from_url(
                config.url, max_connections=1, timeout=self.timeout, socket_connect_timeout=STARTUP_TIMEOUT)
        except ValueError as exc:  # e.g. a db number that is not a number
            raise ConfigError([f"redis.url: {self.url}: {self._scrub(str(exc))}"]) from None
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._sub_client = aioredis.Redis(connection_pool=self._sub_pool)
        self._set = self._client.register_script(_SET)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._purge_set = self._client.register_script(_PURGE_SET)

    # -- keys

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}:entry:{entry_hash(key)}"

    def lease_key(self, key: str) -> str:
        return f"{self.prefix}:lease:{entry_hash(key)}"

    def tag_key(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}"

    def route_key(self, route: str) -> str:
        return f"{self.prefix}:route:{route}"

    # -- life cycle

    async def start(self) -> None:
        """Check Redis once, so a dead one degrades the proxy from the first request, and start the prober."""
        try:  # the whole pool, connected now: a cold burst that had to connect first would blow the call timeout
            await self._call("PING", lambda: asyncio.gather(*(self._client.ping() for _ in range(self.pool_size))),
                             max(self.timeout, STARTUP_TIMEOUT))
            # Scripts loaded now: a first EVALSHA that had to fall back to EVAL costs three round trips.
            scripts = (self._set, self._acquire, self._release, self._purge_set)
            await self._call("SCRIPT", lambda: asyncio.gather(*(self._client.script_load(s.script) for s in scripts)),
                             max(self.timeout, STARTUP_TIMEOUT))
        except CacheBackendError:
            self.breaker.trip()
        else:
            log.info("redis tier %s: up (prefix %s, timeout %.0fms)", self.url, self.prefix, self.timeout * 1000)
        self._prober = asyncio.ensure_future(self._probe())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.wait([self._prober])
        await self._client.aclose()
        await self._sub_client.aclose()
        await self._pool.aclose()
        await self._sub_pool.aclose()

    async def wait_up(self) -> None:
        await self._up.wait()

    @property
    def status(self) -> str:
        return "up" if self.breaker.closed else "down"

    # -- commands

    async def get(self, key: str) -> CachedResponse | None:
        """The stored entry (of this format version), or None."""
        data = await self._call("GET", lambda: self._client.get(self.entry_key(key)))
        return decode(data) if isinstance(data, bytes) else None

    async def get_many(self, keys: list[str]) -> list[CachedResponse | None]:
        """The stored entries of keys, in order, in one MGET (one round trip, one timeout, however many keys)."""
        if not keys:
            return []
        data = await self._call("MGET", lambda: self._client.mget([self.entry_key(k) for k in keys]))
        return [decode(d) if isinstance(d, bytes) else None for d in data]

    async def set(self, key: str, entry: CachedResponse, *, now: float, event: bytes, token: str = "") -> bool:
        """Store with PX = what is left of ttl + stale window, index it by tags and route, release the lease
        `token` holds and publish `event`. False when the entry is already past every window."""
        px = int((entry.keep_until - now) * 1000)
        if px <= 0:
            return False
        sets = [self.tag_key(t) for t in entry.tags] + ([self.route_key(entry.route)] if entry.route else [])
        keys = [self.entry_key(key), self.lease_key(key), *sets]
        args: list[bytes | str | int] = [encode(entry), px, entry_hash(key), token, self.channel, event]
        await self._call("SET", lambda: self._set(keys=keys, args=args))
        return True

    async def acquire(self, key: str, token: str, lease_ms: int) -> Claim:
        """SET lease NX PX, reading the entry in the same round trip (it may have been filled meanwhile)."""
        data, got, left = await self._call(
            "LEASE", lambda: self._acquire(keys=[self.entry_key(key), self.lease_key(key)], args=[token, lease_ms]))
        entry = decode(data) if isinstance(data, bytes) else None
        return Claim(entry, bool(got), max(0, int(left)) / 1000)

    async def lease_left(self, key: str) -> float:
        """Seconds left on whoever holds key's lease; 0 when nobody does."""
        left = await self._call("PTTL", lambda: self._client.pttl(self.lease_key(key)))
        return max(0, int(left)) / 1000

    async def release(self, key: str, token: str, event: bytes = b"") -> None:
        """Give the lease back if it is still ours, and publish `event` (if any) for the waiters."""
        await self._call("RELEASE", lambda: self._release(keys=[self.lease_key(key)],
                                                          args=[token, self.channel, event]))

    async def publish(self, event: bytes) -> None:
        await self._call("PUBLISH", lambda: self._client.publish(self.channel, event))

    async def purge(self, selector: Selector) -> frozenset[str]:
        """Delete the selected entries; returns their hashes. Only keys under our prefix are ever touched."""
        entry_prefix = f"{self.prefix}:entry:"
        if selector.kind == "key":
            h = entry_hash(selector.value)
            n = await self._call("PURGE", lambda: self._client.delete(entry_prefix + h), PURGE_TIMEOUT)
            return frozenset({h} if n else ())
        if selector.kind in ("tag", "route"):
            index = self.tag_key(selector.value) if selector.kind == "tag" else self.route_key(selector.value)
            gone = await self._call("PURGE", lambda: self._purge_set(keys=[index], args=[entry_prefix]),
                                    PURGE_TIMEOUT)
            return frozenset(h.decode() for h in gone)
        return await self._call("PURGE", self._purge_all, PURGE_TIMEOUT)

    async def _purge_all(self) -> frozenset[str]:
        entry_prefix, lease_prefix = f"{self.prefix}:entry:".encode(), f"{self.prefix}:lease:".encode()
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + ":*"
        gone: list[str] = []
        cursor = 0
        while True:
            cursor, names = await self._client.scan(cursor, match=pattern, count=500)
            doomed = [n for n in cast(list[bytes], names) if not n.startswith(lease_prefix)]
            if doomed:
                await self._client.unlink(*doomed)
            gone += [n[len(entry_prefix):].decode() for n in doomed if n.startswith(entry_prefix)]
            if cursor == 0:
                return frozenset(gone)

    async def listen(self, on_event: Callable[[bytes], None]) -> None:
        """Subscribe to the events channel and hand over each message; returns only by raising CacheBackendError.

        The subscriber has its own connection, so it never takes one from the command pool.
        """
        pubsub = self._sub_client.pubsub()
        try:
            await self._call("SUBSCRIBE", lambda: self._subscribe(pubsub))
            self.subscribed = True
            while True:
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except _FAILURES as exc:
                    raise self._failed("events", exc) from exc
                if msg is not None and msg["type"] == "message":
                    on_event(msg["data"])
        finally:
            self.subscribed = False
            with contextlib.suppress(*_FAILURES):  # the connection is being dropped either way
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(self.channel)
        while True:  # until the server confirms, so no event published after this returns is missed
            msg = await pubsub.get_message(timeout=self.timeout)
            if msg is not None and msg["type"] == "subscribe":
                return

    # -- the one place redis errors are caught

    async def _call(self, op: str, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        if not self.breaker.closed:
            raise CacheBackendError(f"redis {op} skipped: {self.url} is marked down")
        try:
            async with asyncio.timeout(timeout or self.timeout):
                result = await make()
        except _FAILURES as exc:
            raise self._failed(op, exc) from exc
        self.breaker.succeeded()
        return result

    def _failed(self, op: str, exc: BaseException, *, probe: bool = False) -> CacheBackendError:
        """Count it, tell the breaker (a failed probe backs it off, a failed call only counts), and describe it
        without the password."""
        self.errors[type(exc).__name__] += 1
        if isinstance(exc, TimeoutError) and not str(exc):
            detail = f"no answer within {self.timeout * 1000:.0f}ms"
        else:
            detail = f"{type(exc).__name__}: {self._scrub(str(exc))}"
        self.last_error = f"redis {op} on {self.url}: {detail}"
        if probe:
            self.breaker.probe_failed()
        else:
            self.breaker.failed()
        return CacheBackendError(self.last_error)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def _changed(self, closed: bool) -> None:
        """Log once per state change, never per request."""
        if closed:
            self._down.clear()
            self._up.set()
            log.warning("redis tier %s: back up; using memory and Redis again", self.url)
        else:
            self._up.clear()
            self._down.set()
            self._stale = True
            log.warning("redis tier %s: unavailable (%s); serving from memory and upstream, probing in %.0fms",
                        self.url, self.last_error or "no answer", self.breaker.probe_in() * 1000)
        for listener in self.on_change:
            listener(closed)

    async def _probe(self) -> None:
        """While the breaker is open, PING at its backoff; the first answer closes it.

        The idle pooled connections are dropped first: after a restart each would fail once on its next use, so
        the probe would miss a Redis that is back, and the first requests after it would trip the breaker again."""
        while True:
            await self._down.wait()
            if self._stale:
                self._stale = False
                await self._drop_idle()
            await asyncio.sleep(self.breaker.probe_in())
            if self.breaker.closed:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await self._client.ping()
            except _FAILURES as exc:
                self._failed("PING", exc, probe=True)
            else:
                self.breaker.succeeded()

    async def _drop_idle(self) -> None:
        for pool in (self._pool, self._sub_pool):
            with contextlib.suppress(*_FAILURES):  # closing sockets; the far end may be gone
                async with asyncio.timeout(self.timeout):
                    await pool.disconnect(inuse_connections=False)


def open_redis(config: RedisConfig) -> RedisTier | None:
    """The shared tier, or None when no URL is configured (memory only)."""
    return RedisTier(config) if config.url else None
