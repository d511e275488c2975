"""Batching: concurrent lookups of one group, gathered inside a short window, go out as one round trip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

G = TypeVar("G", bound=Hashable)  # group: what may share a batch (a player)
K = TypeVar("K", bound=Hashable)  # item key: equal keys are one item (a cache key)
T = TypeVar("T")  # item
R = TypeVar("R")  # one item's result

Send = Callable[[G, list[T]], Awaitable[Sequence[R]]]
# Loop turns a lingering batch stays quiet before it goes: a request read from a socket reaches submit() a few
# turns later (read, handler, fill), so a burst still on its way is not cut in two however long a turn takes.
SETTLE_TURNS: Final = 3
# A group's items further apart than this (or than linger) came spread over a big burst of many groups, not in
# one go: a browser's round of 6 arrives within about 1 ms, even on a busy machine, a 1,000-prop burst does not.
SPREAD: Final = 0.002
# The batcher's clock. uvloop's loop.time() moves in whole milliseconds, so a sub-millisecond `linger` measured on
# it lasted until the next tick, up to a millisecond, and a gap within one tick read as none; timers are set from
# this clock as delays (uvloop runs one under a millisecond on the next loop turn).
_now: Final = time.perf_counter


@dataclass(frozen=True, slots=True)
class Batched(Generic[R]):
    """One submitter's share of a batch: its result, the batch's size, and whether it joined an identical item."""

    result: R
    size: int
    shared: bool


class _Open(Generic[K, T, R]):
    """A group's batch while its window is open; items and futures line up by index."""

    __slots__ = ("index", "items", "futures", "timer", "opened", "last", "gap", "sending")

    def __init__(self, now: float) -> None:
        self.index: dict[K, int] = {}
        self.items: list[T] = []
        self.futures: list[asyncio.Future[R]] = []
        self.timer: asyncio.Handle | None = None
        self.opened = now  # the window closes `window` after this at the latest
        self.last = now  # with `idle`, it closes `idle` after the last new item
        self.gap = 0.0  # the longest wait between two of its new items: its burst's own rhythm
        self.sending = False  # its window closed: it waits for a call slot, still taking items until it gets one


class Batcher(Generic[G, K, T, R]):
    """The first submit of a group opens a window; the batch goes when it closes or holds `max_items` (never more).

    With `idle` > 0 the window also closes once no new item has joined for that long (Kafka's linger, Nagle's
    idea): a burst still fills one batch, while a lone request, or a client that sends one request at a time
    over a few connections, waits `idle` rather than the whole window.

    With `linger` > 0 it goes as soon as the burst that opened it has stopped arriving: no new item for `linger`,
    and none for SETTLE_TURNS loop turns after that, nor while `arriving()` says more requests are on their way
    (connections just opened that have sent nothing yet: a browser opening its 6 for a screen's first round,
    whose first request would otherwise go alone, come back first and keep its connection out of step). Waiting
    longer buys nothing: the clients that sent the burst wait for its answers before they ask for more. A group
    whose items came further apart than `linger` and SPREAD (spread over a big burst of many groups) waits `idle`
    or the window as before, so that burst still fills one batch per group. Per group at most one batch is
    forming; batches of different groups go out side by side.

    `send(group, items)` returns one result per item, in item order. It runs as its own task, so a submitter that
    is cancelled (its client went away) never cancels the batch for the others. `calls` bounds the sends in
    flight: a number, a semaphore, or several semaphores (this batcher's own and one shared with others), taken
    in order.
    """

    def __init__(
        self, send: Send[G, T, R], *, window: float, max_items: int,
        calls: int | asyncio.Semaphore | Sequence[asyncio.Semaphore] = 8, idle: float = 0.0, linger: float = 0.0,
        cut_calls: int = 0, arriving: Callable[[], bool] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"`max_items` must be at least 1, got {max_items}")
        self._send = send
        self.window = window
        self.idle = idle if 0 < idle < window else 0.0
        self.linger = linger if 0 < linger < window else 0.0
        self.max_items = max_items
        self.arriving = arriving  # more submits may be on their way: a lingering batch waits (idle, window bound it)
        if isinstance(calls, int):
            calls = asyncio.Semaphore(calls)
        self._calls = (calls,) if isinstance(calls, asyncio.Semaphore) else tuple(calls)
        # Batches cut short by the window or `idle` (items may still be coming) take at most this many of the
        # slots: under load the others keep taking items while they wait, instead of leaving half empty.
        self._cut = asyncio.Semaphore(cut_calls) if cut_calls > 0 else None
        self._open: dict[G, _Open[K, T, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0  # batches handed to send
        self.deduplicated = 0  # submits that joined an identical item already waiting

    def __len__(self) -> int:
        """Batches still collecting plus batches being sent."""
        return sum(not b.sending for b in self._open.values()) + len(self._tasks)

    async def submit(self, group: G, key: K, item: T) -> Batched[R]:
        """Add item to its group's open batch (once per key) and wait for its own result."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Open(_now())
            batch.timer = loop.call_later(self.linger or self.idle or self.window, self._due, group, batch)
        i = batch.index.get(key)
        shared = i is not None
        if i is None:
            now = _now()
            batch.gap = max(batch.gap, now - batch.last) if batch.items else 0.0
            batch.last = now
            i = batch.index[key] = len(batch.items)
            batch.items.append(item)
            batch.futures.append(loop.create_future())
            if len(batch.items) >= self.max_items:
                self._flush(group, batch)
        else:
            self.deduplicated += 1
        # Shielded: cancelling this submitter must not cancel a future that others share.
        result = await asyncio.shield(batch.futures[i])
        return Batched(result, len(batch.items), shared)

    def flush(self, group: G) -> None:
        """Send the group's open batch now rather than at the end of its window."""
        batch = self._open.get(group)
        if batch is not None:
            self._flush(group, batch)

    async def aclose(self) -> None:
        """Cancel open windows and batches in flight: their submitters get CancelledError."""
        for batch in self._open.values():
            if batch.timer is not None:
                batch.timer.cancel()
            for fut in batch.futures:
                fut.cancel()
        self._open.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _due(self, group: G, batch: _Open[K, T, R]) -> None:
        """The timer: flush if the window is over or the group went idle, settle if it lingered, else look again
        when one of them ends."""
        loop = asyncio.get_running_loop()
        now = _now()
        end = batch.opened + self.window
        if self.idle:
            end = min(end, batch.last + self.idle)
        if now >= end - 0.0005 or self._open.get(group) is not batch:
            self._flush(group, batch, cut=self._open.get(group) is batch)
        elif self._lingers(batch) and now >= batch.last + self.linger - 0.0001:
            batch.timer = loop.call_soon(self._settle, group, batch, len(batch.items), SETTLE_TURNS)
        else:
            at = min(end, batch.last + self.linger) if self._lingers(batch) else end
            batch.timer = loop.call_later(max(0.0, at - now), self._due, group, batch)

    def _lingers(self, batch: _Open[K, T, R]) -> bool:
        """Whether the batch goes once its burst stops: its items came together, never `linger` apart. A group
        whose items trickle in between other groups' (a big burst over many groups, or a client that stalls)
        waits `idle` or the window instead, so it still fills one batch."""
        return self.linger > 0 and batch.gap <= max(self.linger, SPREAD)

    def _settle(self, group: G, batch: _Open[K, T, R], seen: int, turns: int) -> None:
        """One quiet loop turn more; a new item anywhere means the burst goes on, so linger again from it."""
        if self._open.get(group) is not batch or batch.sending:
            return
        loop = asyncio.get_running_loop()
        if len(batch.items) != seen:
            self._due(group, batch)
        elif turns <= 1 and self.arriving is not None and self.arriving():
            batch.timer = loop.call_later(self.linger, self._due, group, batch)  # linger on; `idle` still ends it
        elif turns <= 1:
            self._flush(group, batch)
        else:
            batch.timer = loop.call_soon(self._settle, group, batch, seen, turns - 1)

    def _flush(self, group: G, batch: _Open[K, T, R], *, cut: bool = False) -> None:
        """Close the window. A full batch leaves the group at once; any other keeps taking items while it waits
        for one of the `calls` slots (a `cut` one also for one of `cut_calls`), so under load batches grow
        instead of queueing up half empty."""
        if len(batch.items) >= self.max_items and self._open.get(group) is batch:
            del self._open[group]
        if batch.sending:
            return  # already waiting for a slot (the window closed, then it filled up)
        batch.sending = True
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._run(group, batch, cut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: G, batch: _Open[K, T, R], cut: bool = False) -> None:
        try:
            taken: list[asyncio.Semaphore] = []
            try:
                for slot in (self._cut, *self._calls) if cut and self._cut is not None else self._calls:
                    await slot.acquire()
                    taken.append(slot)
                if self._open.get(group) is batch:
                    del self._open[group]  # from here on the batch is what it is
                self.sent += 1
                results = await self._send(group, batch.items)
            finally:
                for slot in reversed(taken):
                    slot.release()
            if len(results) != len(batch.items):
                raise ValueError(f"batch send returned {len(results)} results for {len(batch.items)} items")
        except asyncio.CancelledError:
            for fut in batch.futures:
                fut.cancel()
            raise
        except Exception as exc:
            for fut in batch.futures:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: a future whose submitters all left must not log "never retrieved"
            return
        for fut, result in zip(batch.futures, results, strict=True):
            if not fut.done():
                fut.set_result(result)
