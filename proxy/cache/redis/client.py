"""The connection to Redis: redis-py's client built from the config, and the one breaker-guarded call every
command goes through (RedisError -> CacheBackendError here only; passwords never leave in a message)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.concurrency.breaker import Breaker
from proxy.config.settings import RedisConfig
from proxy.errors import CacheBackendError, ConfigError

log = logging.getLogger("sidecache")
T = TypeVar("T")

STARTUP_TIMEOUT: Final = 1.0  # connecting the pool before the listener opens; no client is waiting yet
FAILURES: Final = (RedisError, OSError, TimeoutError)
_USERINFO: Final = re.compile(r"(://[^:@/?#]*:)([^@/?#]*)@")
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)([^&#]*)")


def redact(url: str) -> str:
    """The URL with its password (user-info or `?password=`) shown as ***: safe for logs, errors and /readyz."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


class RedisClient:
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
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self.on_change: list[Callable[[bool], None]] = []
        self.breaker = Breaker(failures=config.breaker_failures, probe_min=config.probe_min,
                               probe_max=config.probe_max, clock=clock, on_change=self._changed)
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
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
            raise ConfigError([f"redis.url: {self.url}: {self.scrub(str(exc))}"]) from None
        self.redis = aioredis.Redis(connection_pool=self._pool)
        self.subscriber = aioredis.Redis(connection_pool=self._sub_pool)  # pub/sub never takes a command connection

    async def start(self, scripts: list[str]) -> None:
        """Check Redis once, so a dead one degrades the proxy from the first request, and start the prober."""
        try:  # the whole pool, connected now: a cold burst that had to connect first would blow the call timeout
            await self.call("PING", lambda: asyncio.gather(*(self.redis.ping() for _ in range(self.pool_size))),
                            max(self.timeout, STARTUP_TIMEOUT))
            # Scripts loaded now: a first EVALSHA that had to fall back to EVAL costs three round trips.
            await self.call("SCRIPT", lambda: asyncio.gather(*(self.redis.script_load(s) for s in scripts)),
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
        await self.redis.aclose()
        await self.subscriber.aclose()
        await self._pool.aclose()
        await self._sub_pool.aclose()

    async def wait_up(self) -> None:
        await self._up.wait()

    @property
    def status(self) -> str:
        return "up" if self.breaker.closed else "down"

    # -- the one place redis errors are caught

    async def call(self, op: str, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """make() under the breaker and the call timeout; every failure leaves as CacheBackendError."""
        if not self.breaker.closed:
            raise CacheBackendError(f"redis {op} skipped: {self.url} is marked down")
        try:
            async with asyncio.timeout(timeout or self.timeout):
                result = await make()
        except FAILURES as exc:
            raise self.failed(op, exc) from exc
        self.breaker.succeeded()
        return result

    def failed(self, op: str, exc: BaseException) -> CacheBackendError:
        """Count it, tell the breaker, and describe it without the password."""
        self.errors[type(exc).__name__] += 1
        if isinstance(exc, TimeoutError) and not str(exc):
            detail = f"no answer within {self.timeout * 1000:.0f}ms"
        else:
            detail = f"{type(exc).__name__}: {self.scrub(str(exc))}"
        self.last_error = f"redis {op} on {self.url}: {detail}"
        self.breaker.failed()
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
            log.warning("redis tier %s: unavailable (%s); serving from memory and upstream, probing in %.0fms",
                        self.url, self.last_error or "no answer", self.breaker.probe_in() * 1000)
        for listener in self.on_change:
            listener(closed)

    async def _probe(self) -> None:
        """While the breaker is open, PING at its backoff; the first answer closes it."""
        while True:
            await self._down.wait()
            await asyncio.sleep(self.breaker.probe_in())
            if self.breaker.closed:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await self.redis.ping()
            except FAILURES as exc:
                self.failed("PING", exc)
            else:
                self.breaker.succeeded()
