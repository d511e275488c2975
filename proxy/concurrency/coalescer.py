"""Single flight: one in-flight fetch per key, shared by everyone who asks meanwhile (souin's singleflight)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Generic, TypeVar

from proxy.concurrency.eager import eager_task

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """The fetch runs as its own task, so no caller, leader or waiter, can cancel it for the others.

    The task starts eagerly: the fetch runs up to its first suspension (its upstream request written) before the
    rest of a burst's handlers, queued ahead of an ordinary task, are run."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self.waiters = 0  # callers waiting on a fetch someone else started

    def __len__(self) -> int:
        return len(self._inflight)

    def __contains__(self, key: K) -> bool:
        return key in self._inflight

    def task(self, key: K) -> asyncio.Task[V] | None:
        """The fetch in flight for key, to wait on without running anything (a parked request: serving/parking.py)."""
        return self._inflight.get(key)

    async def run(self, key: K, fetch: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The fetch's result (or exception) and whether this caller joined a fetch already in flight."""
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:
            task = self.start(key, fetch)
            return await asyncio.shield(task), joined
        self.waiters += 1
        try:
            return await asyncio.shield(task), joined
        finally:
            self.waiters -= 1

    def start(self, key: K, fetch: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """Start (or return) the fetch for key without waiting: background refreshes use this."""
        task = self._inflight.get(key)
        if task is None:
            started = fetch()
            task = eager_task(started) if isinstance(started, Coroutine) else asyncio.ensure_future(started)
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finish(key, t))
        return task

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for fetches in flight, then cancel the rest and wait for them to end."""
        tasks = list(self._inflight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _finish(self, key: K, task: asyncio.Task[V]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch whose callers all left never logs "never retrieved"
