"""Commands of one kind asked in the same loop turn go to Redis together: one client call, one round trip.

redis-py spends about 100 us of CPU on a command awaited on its own (its pool, its encoder, its parser and the
awaits between them). A cold screen of 60 props asked for 180 of them at once (a GET, a lease and a write for each),
which cost more than the screen's upstream calls did. ioredis calls this auto-pipelining; the wait it adds is
the rest of the current loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from proxy.errors import CacheBackendError

A = TypeVar("A")
R = TypeVar("R")


class SameTurn(Generic[A, R]):
    """Gathers the calls made until the loop turns, then sends them as one batch (`send`, one result per call,
    in order). A caller that is cancelled leaves the batch without breaking it for the others; a failed batch
    fails every call in it, each with an error of its own."""

    def __init__(self, send: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._send = send
        self._queued: list[tuple[A, asyncio.Future[R]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # held, so a batch in flight is not collected

    def __call__(self, arg: A) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        future: asyncio.Future[R] = loop.create_future()
        self._queued.append((arg, future))
        return future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        live = [(arg, future) for arg, future in batch if not future.done()]
        if not live:
            return
        try:
            results = await self._send([arg for arg, _ in live])
        except asyncio.CancelledError:  # the loop is closing: so are the callers
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(CacheBackendError(str(exc)) if isinstance(exc, CacheBackendError) else exc)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)


def per_turn(redis: Redis | RedisCluster, one: Callable[[A], Awaitable[R]],
             many: Callable[[list[A]], Awaitable[list[R]]]) -> Callable[[A], Awaitable[R]]:
    """A script's calls of one loop turn sent as one `many`, a lone one as `one`; on a cluster, `one` each:
    its pipelines do not load a script a node lacks."""
    if isinstance(redis, RedisCluster):
        return one

    async def send(calls: list[A]) -> list[R]:
        return [await one(calls[0])] if len(calls) == 1 else await many(calls)

    return SameTurn(send)


Call = tuple[list[str], list[bytes | str | int]]  # a script's keys and arguments


async def run_script(redis: Redis, script: AsyncScript, calls: list[Call]) -> list[Any]:
    """One script over many (keys, args) in one pipeline. By its SHA alone: redis-py would ask SCRIPT EXISTS
    first, a round trip more each time; a server that lost the script (restarted, flushed) gets it once more."""
    for attempt in (1, 2):
        pipe = redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            got: list[Any] = await pipe.execute()
            return got
        except NoScriptError:
            if attempt == 2:
                raise
            await redis.script_load(script.script)
    raise AssertionError("unreachable")
