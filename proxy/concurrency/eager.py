"""Eager tasks: a coroutine's first step runs at once, inside its own task, before anything else is scheduled.

A burst of identical misses is a queue of handlers that are all ready to run; an ordinary task for the leader's
fetch joins the end of that queue, so its upstream call waits behind every other handler of the burst (several
milliseconds at 200 requests). The same holds for a fill the fast lane starts from a connection's callback: run
in place, its upstream request is on the wire before the next connection's request is read. Python 3.12's eager
tasks run that first step in place; this module gives 3.11 the same: the task is created, made the current task,
stepped once, and the caller's task (if any) is current again.
From the task's second step on, it is an ordinary task (asyncio's own), so cancellation, `current_task()`
and timeouts inside the coroutine behave as in any task, its first step included.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def eager_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task whose coroutine already ran up to its first suspension (its whole run, if it never suspends)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)
    caller = asyncio.current_task(loop)  # None in a plain callback (the fast lane's data_received)
    context = contextvars.copy_context()
    first: list[tuple[str, Any]] = []
    task = loop.create_task(_resume(coro, first), context=context)
    if caller is not None:
        asyncio.tasks._leave_task(loop, caller)
    asyncio.tasks._enter_task(loop, task)
    try:
        first.append(("yield", context.run(coro.send, None)))
    except StopIteration as stop:
        first.append(("return", stop.value))
    except BaseException as exc:  # noqa: B036 - handed to the task, which raises it to whoever awaits it
        first.append(("raise", exc))
    finally:
        asyncio.tasks._leave_task(loop, task)
        if caller is not None:
            asyncio.tasks._enter_task(loop, caller)
    return task


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], first: list[tuple[str, Any]]) -> Generator[Any, Any, T]:
    """`yield from coro` for a coroutine whose first step already ran: the task drives it from there."""
    kind, value = first[0]
    if kind == "return":
        return value  # type: ignore[no-any-return]
    if kind == "raise":
        raise value
    yielded = value
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: B036 - thrown in by the task (a cancellation): passed on as is
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
