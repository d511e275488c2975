"""The connection to Redis: redis-py's client built from the config, and the one breaker-guarded call every
command goes through (RedisError -> CacheBackendError here only; passwords never leave in a message)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisClusterException

from proxy.concurrency.breaker import Breaker
from proxy.config.settings import RedisConfig
from proxy.errors import CacheBackendError, ConfigError

log = logging.getLogger("sidecache")
T = TypeVar("T")

STARTUP_TIMEOUT: Final = 1.0  # connecting the pool before the listener opens; no client is waiting yet
NODE_CHECK: Final = 1.0  # how often the nodes known are PINGed for /readyz, /stats and the node gauge
TOPOLOGY_CHECKS: Final = 10  # node checks between two readings of a cluster's topology
# What a call may raise when Redis misbehaves. Exception, not a list of redis-py's types: a connection dropped
# while a call is cancelled has been seen to raise AttributeError from inside redis-py, and whatever Redis does
# must never fail a client request (each is counted by class in sidecache_redis_errors).
FAILURES: Final = (Exception,)
Client = aioredis.Redis | RedisCluster
_USERINFO: Final = re.compile(r"(://[^:@/?#]*:)([^@/?#]*)@")
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)([^&#]*)")


def redact(url: str) -> str:
    """The URL with its password (user-info or `?password=`) shown as ***: safe for logs, errors and /readyz."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


@dataclass(frozen=True, slots=True)
class Node:
    """A Redis server this process knows of, what it is, and whether it answered its last PING."""

    address: str
    role: Literal["primary", "replica", "sentinel"]
    up: bool


class RedisClient:
    """redis-py's own client for the mode (Redis, RedisCluster, or Sentinel's primary), behind a circuit breaker.

    Every call has the configured timeout and holds one of `pool_size` slots (the pool of a single server blocks
    by itself; cluster and sentinel pools would raise instead, so the slots keep them from filling up); every
    redis or socket error leaves as CacheBackendError, is counted in `errors`, and feeds the breaker. While the
    breaker is open no call is made; a prober PINGs with backoff (in a cluster, every primary; behind Sentinel,
    the primary found anew). Failover itself is redis-py's: MOVED and topology refreshes in a cluster, the
    sentinels asked again for each new connection.
    """

    def __init__(self, config: RedisConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = config.mode
        self.url = redact(config.url) if config.url else f"redis://{config.nodes[0]}/0" if config.nodes else ""
        if config.mode == "sentinel":  # what names the server in logs and /readyz: the service and who finds it
            self.url = f"{config.service} via sentinels {','.join(config.sentinels)}" + (
                f" ({self.url})" if self.url else "")
        secrets: set[str] = set()
        for m in (_USERINFO.search(config.url), _QUERY_PASSWORD.search(config.url)):
            if m and m.group(2):
                secrets |= {m.group(2), unquote(m.group(2))}
        self._secrets = sorted(secrets, key=len, reverse=True)  # longest first, so no part of one is left showing
        self.timeout = float(config.timeout)
        self.pool_size = config.pool_size
        self.prefix = config.prefix
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.on_change: list[Callable[[bool], None]] = []
        self.breaker = Breaker(failures=config.breaker_failures, probe_min=config.probe_min,
                               probe_max=config.probe_max, clock=clock, on_change=self._changed)
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._stale = False  # the breaker opened: pooled connections may be dead, drop them before probing
        self._closed = False
        self.nodes: list[Node] = []
        self.primary = ""  # behind Sentinel: the primary as the sentinels last said
        self.primary_moves = 0  # times that changed while running (the subscription follows it)
        self._watcher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(config.pool_size) if config.mode != "single" else None
        self._sentinel: Sentinel | None = None
        self._service = config.service
        self._seeds = [*([config.url] if config.url else []), *config.nodes]
        try:
            self.redis, self.subscriber = self._connect(config)
        except (ValueError, RedisClusterException) as exc:  # e.g. a db number that is not a number
            raise ConfigError([f"redis.url: {self.url}: {self.scrub(str(exc))}"]) from None

    def _connect(self, config: RedisConfig) -> tuple[Client, Client]:
        """The command client and the subscriber's (pub/sub never takes a command connection)."""
        # Each call's own asyncio timeout bounds it, connecting included (a cancelled connect goes back to the pool);
        # the socket timeout only backs that up, so the start-up connects get their longer budget.
        if config.mode == "cluster":
            seeds = [ClusterNode(*_hostport(n)) for n in config.nodes]
            cluster = RedisCluster.from_url(self._seed_url(config), startup_nodes=seeds or None,
                                            max_connections=config.pool_size + 2,
                                            socket_connect_timeout=STARTUP_TIMEOUT)
            return cluster, cluster  # its pub/sub takes a connection of its own from a node's pool
        if config.mode == "sentinel":
            options = parse_url(config.url) if config.url else {}
            ssl = options.pop("connection_class", None) is SSLConnection
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8
                [_hostport(s) for s in config.sentinels],
                sentinel_kwargs={"socket_connect_timeout": STARTUP_TIMEOUT, "socket_timeout": STARTUP_TIMEOUT})
            common: dict[str, Any] = {"socket_connect_timeout": STARTUP_TIMEOUT, "ssl": ssl, **options}
            return (self._sentinel.master_for(config.service, max_connections=config.pool_size + 2, **common),
                    self._sentinel.master_for(config.service, max_connections=2, **common))
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=config.pool_size, timeout=self.timeout, socket_connect_timeout=STARTUP_TIMEOUT)
        sub_pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=1, timeout=self.timeout, socket_connect_timeout=STARTUP_TIMEOUT)
        return aioredis.Redis(connection_pool=pool), aioredis.Redis(connection_pool=sub_pool)

    @staticmethod
    def _seed_url(config: RedisConfig) -> str:
        return config.url or f"redis://{config.nodes[0]}/0"

    async def start(self, scripts: list[str]) -> None:
        """Check Redis once, so a dead one degrades the proxy from the first request, and start the prober.

        Raises ConfigError when Redis answers but is not what the config says (a seed that is no cluster node,
        sentinels that monitor no such service): that is a mistake to fix, not an outage to ride out."""
        try:
            await self.call("CONNECT", self._check_kind, max(self.timeout, STARTUP_TIMEOUT) * 2)
            # The whole pool, connected now: a cold burst that had to connect first would blow the call timeout.
            await self.call("PING", lambda: asyncio.gather(*(self._ping() for _ in range(self.pool_size))),
                            max(self.timeout, STARTUP_TIMEOUT))
            # Scripts loaded now (on every primary of a cluster): a first EVALSHA that fell back to EVAL costs
            # three round trips.
            await self.call("SCRIPT", lambda: asyncio.gather(*(self.redis.script_load(s) for s in scripts)),
                            max(self.timeout, STARTUP_TIMEOUT))
        except CacheBackendError:
            self.breaker.trip()
        else:
            log.info("redis tier %s (%s): up (prefix %s, timeout %.0fms)", self.url, self.mode, self.prefix,
                     self.timeout * 1000)
        self._prober = asyncio.ensure_future(self._probe())
        self._watcher = asyncio.ensure_future(self._watch())

    async def _check_kind(self) -> None:
        if isinstance(self.redis, RedisCluster):
            try:
                await self.redis.initialize()
            except RedisClusterException as exc:
                if "cluster mode is not enabled" in str(exc).lower():
                    seeds = ", ".join(redact(s) for s in self._seeds)
                    raise ConfigError([f"redis: mode = \"cluster\", but the seed node ({seeds}) is not a Redis "
                                       "Cluster node (cluster mode is not enabled on it): name a node of the "
                                       "cluster, or set mode = \"single\""]) from None
                raise
        elif self._sentinel is not None:
            answers = await asyncio.gather(*(s.sentinel_masters() for s in self._sentinel.sentinels),
                                           return_exceptions=True)
            known = [a for a in answers if isinstance(a, dict)]
            if not known:
                raise next(a for a in answers if isinstance(a, BaseException))
            if not any(self._service in a for a in known):
                names = sorted({name for a in known for name in a}) or ["nothing"]
                raise ConfigError([f"redis.service: the sentinels that answered monitor no service named "
                                   f"{self._service!r} (they monitor: {', '.join(names)}); set `service` to one "
                                   "of those"])
        else:
            await self.redis.ping()

    async def _ping(self, *, refresh: bool = False) -> object:
        """PING the server; in a cluster every primary, after reading the topology again when `refresh` (a call
        cut short by its timeout can leave redis-py's slot map pointing at a node that is gone)."""
        if isinstance(self.redis, RedisCluster):
            if refresh:
                await self.redis.nodes_manager.initialize()
            return await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
        return await self.redis.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._prober, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        await self.redis.aclose()
        if self.subscriber is not self.redis:
            await self.subscriber.aclose()
        for client in (self.redis, self.subscriber):
            if isinstance(client, aioredis.Redis):
                await client.connection_pool.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def wait_up(self) -> None:
        await self._up.wait()

    @property
    def status(self) -> str:
        return "up" if self.breaker.closed else "down"

    # -- the one place redis errors are caught

    async def call(self, op: str, make: Callable[[], Awaitable[T]], timeout: float | None = None, *,
                   commands: int = 1) -> T:
        """make() under the breaker and the call timeout; every failure leaves as CacheBackendError. A pipeline
        of `commands` that fails counts as that many failed calls, as they would have sent one by one."""
        if not self.breaker.closed:
            raise CacheBackendError(f"redis {op} skipped: {self.url} is marked down")
        try:
            async with asyncio.timeout(timeout or self.timeout):
                if self._slots is None:
                    result = await make()
                else:
                    async with self._slots:
                        result = await make()
        except ConfigError:
            raise
        except FAILURES as exc:
            raise self.failed(op, exc, commands=commands) from exc
        self.breaker.succeeded()
        return result

    def failed(self, op: str, exc: BaseException, *, probe: bool = False, commands: int = 1) -> CacheBackendError:
        """Count it, tell the breaker (a failed probe backs it off, a failed call only counts), and describe it
        without the password."""
        self.errors[type(exc).__name__] += commands
        if isinstance(exc, TimeoutError) and not str(exc):
            detail = f"no answer within {self.timeout * 1000:.0f}ms"
        else:
            detail = f"{type(exc).__name__}: {self.scrub(str(exc))}"
        self.last_error = f"redis {op} on {self.url}: {detail}"
        if probe:
            self.breaker.probe_failed()
        else:
            self.breaker.failed(commands)
        return CacheBackendError(self.last_error)

    def scrub(self, text: str) -> str:
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
            if not self.breaker.closed:
                await self._probe_once()

    async def _probe_once(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, STARTUP_TIMEOUT) if self.mode == "cluster" else
                                       self.timeout):
                await self._ping(refresh=True)
        except FAILURES as exc:
            self.failed("PING", exc, probe=True)
        else:
            self.breaker.succeeded()

    async def _drop_idle(self) -> None:
        """Close the idle connections of every pool (a cluster's: each node's); in-use ones finish first."""
        for client in (self.redis, self.subscriber):
            with contextlib.suppress(*FAILURES):  # closing sockets; the far end may be gone
                async with asyncio.timeout(self.timeout):
                    if isinstance(client, RedisCluster):
                        for node in client.get_nodes():
                            await node.disconnect_free_connections()
                    else:
                        await client.connection_pool.disconnect(inuse_connections=False)

    async def _watch(self) -> None:
        """Every NODE_CHECK, PING each node known, so /readyz and /stats can say which are up (a cluster's
        topology read again every TOPOLOGY_CHECKS, and at every check while the breaker is open).

        While the breaker is open and a primary answers again (a replica promoted, the sentinels naming a new
        one), probe at once: the breaker's backoff, grown during the failover, would keep the tier off for up
        to `probe_max` after the new primary is there."""
        checks = 0
        while True:
            checks += 1
            try:
                async with asyncio.timeout(max(self.timeout, STARTUP_TIMEOUT)):
                    if isinstance(self.redis, RedisCluster) and (checks % TOPOLOGY_CHECKS == 0 or
                                                                 not self.breaker.closed):
                        await self.redis.nodes_manager.initialize()
                    self.nodes = await self._check_nodes()
            except FAILURES:  # the topology itself could not be read: keep what we knew, marked down
                self.nodes = [Node(n.address, n.role, False) for n in self.nodes]
            primaries = [n for n in self.nodes if n.role == "primary"]
            if not self.breaker.closed and primaries and all(n.up for n in primaries):
                await self._probe_once()
            await asyncio.sleep(NODE_CHECK)

    async def _follow_primary(self) -> None:
        """Ask the sentinels where the primary is; on a change, redis-py's pools drop their idle connections (in-use
        ones as they come back), so commands move over within NODE_CHECK. Without this they would stay on a
        demoted primary that still takes writes until the sentinels reconfigure it (up to 10 s later)."""
        addresses = []
        for client in (self.redis, self.subscriber):
            pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
            if isinstance(pool, SentinelConnectionPool):
                addresses.append(await pool.get_master_address())  # type: ignore[no-untyped-call]
        if not addresses:
            return
        host, port = addresses[0]
        primary = f"{host}:{port}"
        if self.primary and primary != self.primary:
            self.primary_moves += 1
            log.warning("redis tier %s: the primary moved from %s to %s", self.url, self.primary, primary)
        self.primary = primary

    async def _check_nodes(self) -> list[Node]:
        async def up(ping: Awaitable[object]) -> bool:
            try:
                async with asyncio.timeout(max(self.timeout, 0.25)):
                    await ping
            except FAILURES:
                return False
            return True

        if isinstance(self.redis, RedisCluster):
            known = self.redis.get_nodes()
            ups = await asyncio.gather(*(up(self.redis.ping(target_nodes=n)) for n in known))
            return sorted((Node(n.name, "primary" if n.server_type == "primary" else "replica", ok)
                           for n, ok in zip(known, ups, strict=True)), key=lambda n: (n.role, n.address))
        if self._sentinel is not None:
            await self._follow_primary()
            sentinels = self._sentinel.sentinels
            nodes = [Node(_address_of(s), "sentinel", ok) for s, ok in
                     zip(sentinels, await asyncio.gather(*(up(s.ping()) for s in sentinels)), strict=True)]
            try:
                host, port = await self._sentinel.discover_master(self._service)
            except FAILURES:
                return nodes
            replicas = []
            for s in self._sentinel.sentinels:
                try:
                    replicas = await s.sentinel_slaves(self._service)
                    break
                except FAILURES:
                    continue
            primary = Node(f"{host}:{port}", "primary", await up(self.redis.ping()))
            return [primary, *(Node(f"{r['ip']}:{r['port']}", "replica", not (r["is_sdown"] or r["is_odown"]))
                               for r in replicas), *nodes]
        address = _address_of(self.redis)
        return [Node(address, "primary", await up(self.redis.ping()))]


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _address_of(client: aioredis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return str(kw["path"]) if "path" in kw else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
