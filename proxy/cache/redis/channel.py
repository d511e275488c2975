"""The events channel on Redis pub/sub: published to by every process, listened to on a connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio.client import PubSub

from proxy.cache.redis.client import FAILURES, RedisClient
from proxy.cache.redis.keyspace import Keyspace
from proxy.errors import CacheBackendError


class Channel:
    """Events out with PUBLISH, in through one subscription; `subscribed` while the subscription is confirmed."""

    def __init__(self, client: RedisClient, keys: Keyspace) -> None:
        self.client, self.name = client, keys.channel
        self.subscribed = False

    async def publish(self, event: bytes) -> None:
        await self.client.call("PUBLISH", lambda: self.client.redis.publish(self.name, event))

    async def listen(self, on_event: Callable[[bytes], None]) -> None:
        """Subscribe and hand over each message; returns only by raising CacheBackendError.

        The subscriber has its own connection, so it never takes one from the command pool.
        """
        pubsub = self.client.subscriber.pubsub()
        try:
            moves = self.client.primary_moves
            await self.client.call("SUBSCRIBE", lambda: self._subscribe(pubsub))
            self.subscribed = True
            while True:
                if self.client.primary_moves != moves:  # events go to the new primary now: subscribe there
                    raise CacheBackendError(f"redis events on {self.client.url}: the primary moved")
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except FAILURES as exc:
                    raise self.client.failed("events", exc) from exc
                if msg is not None and msg["type"] == "message":
                    on_event(msg["data"])
        finally:
            self.subscribed = False
            with contextlib.suppress(*FAILURES):  # the connection is being dropped either way
                async with asyncio.timeout(self.client.timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(self.name)
        while True:  # until the server confirms, so no event published after this returns is missed
            msg = await pubsub.get_message(timeout=self.client.timeout)
            if msg is not None and msg["type"] == "subscribe":
                return
