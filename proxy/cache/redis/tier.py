"""The shared tier as the cache sees it: one client, and the entries, leases and events channel on it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from proxy.cache.events import Selector
from proxy.cache.redis.channel import Channel
from proxy.cache.redis.client import Node, RedisClient
from proxy.cache.redis.entries import PURGE_SET, SET, Entries
from proxy.cache.redis.keyspace import Keyspace
from proxy.cache.redis.leases import ACQUIRE, RELEASE, Claim, Leases
from proxy.concurrency.breaker import Breaker
from proxy.config.settings import RedisConfig
from proxy.policy.entry import CachedResponse

__all__ = ["Claim", "Node", "RedisTier", "open_redis"]


class RedisTier:
    """What TieredCache and LeaseCoalescer call; each concept lives in its own module, this only joins them."""

    def __init__(self, config: RedisConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = RedisClient(config, clock=clock)
        self.keys = Keyspace(config.prefix, clustered=config.mode == "cluster")
        self.entries = Entries(self.client, self.keys)
        self.leases = Leases(self.client, self.keys)
        self.channel = Channel(self.client, self.keys)

    # -- state the cache, the admin and the tests read

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def timeout(self) -> float:
        return self.client.timeout

    @property
    def breaker(self) -> Breaker:
        return self.client.breaker

    @property
    def errors(self) -> Counter[str]:
        return self.client.errors

    @property
    def last_error(self) -> str:
        return self.client.last_error

    @property
    def on_change(self) -> list[Callable[[bool], None]]:
        return self.client.on_change

    @property
    def mode(self) -> str:
        return self.client.mode

    @property
    def nodes(self) -> list[Node]:
        """The servers known (a cluster's nodes; the sentinels, primary and replicas) as of their last PING."""
        return self.client.nodes

    @property
    def subscribed(self) -> bool:
        return self.channel.subscribed

    @property
    def status(self) -> str:
        return self.client.status

    # -- life cycle

    async def start(self) -> None:
        await self.client.start([SET, PURGE_SET, ACQUIRE, RELEASE])

    async def close(self) -> None:
        await self.client.close()

    async def wait_up(self) -> None:
        await self.client.wait_up()

    # -- commands

    async def get(self, key: str) -> CachedResponse | None:
        return await self.entries.get(key)

    async def get_many(self, keys: list[str]) -> list[CachedResponse | None]:
        return await self.entries.get_many(keys)

    async def set(self, key: str, entry: CachedResponse, *, now: float, event: bytes, token: str = "") -> bool:
        return await self.entries.set(key, entry, now=now, event=event, token=token)

    async def purge(self, selector: Selector) -> frozenset[str]:
        return await self.entries.purge(selector)

    async def acquire(self, key: str, token: str, lease_ms: int) -> Claim:
        return await self.leases.acquire(key, token, lease_ms)

    async def lease_left(self, key: str) -> float:
        return await self.leases.left(key)

    async def release(self, key: str, token: str, event: bytes = b"") -> None:
        await self.leases.release(key, token, event)

    async def publish(self, event: bytes) -> None:
        await self.channel.publish(event)

    async def listen(self, on_event: Callable[[bytes], None]) -> None:
        await self.channel.listen(on_event)


def open_redis(config: RedisConfig) -> RedisTier | None:
    """The shared tier, or None when the config names no Redis (memory only)."""
    return RedisTier(config) if config.enabled else None
