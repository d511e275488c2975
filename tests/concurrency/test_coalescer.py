"""Single flight, generic and cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from proxy.concurrency.coalescer import Coalescer


async def test_one_fetch_for_concurrent_callers_then_a_new_one() -> None:
    c: Coalescer[str, int] = Coalescer()
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    results = await asyncio.gather(*(c.run("k", fetch) for _ in range(50)))
    assert calls == 1
    assert sorted(joined for _, joined in results) == [False] + [True] * 49
    assert {v for v, _ in results} == {1}
    assert len(c) == 0
    assert (await c.run("k", fetch))[0] == 2


async def test_exception_reaches_every_caller() -> None:
    c: Coalescer[str, int] = Coalescer()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    results = await asyncio.gather(*(c.run("k", fail) for _ in range(5)), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError] * 5


async def test_cancelled_callers_do_not_cancel_the_fetch() -> None:
    c: Coalescer[str, str] = Coalescer()
    done = asyncio.Event()

    async def fetch() -> str:
        await asyncio.sleep(0.05)
        done.set()
        return "v"

    first = asyncio.ensure_future(c.run("k", fetch))
    second = asyncio.ensure_future(c.run("k", fetch))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == ("v", True)
    assert done.is_set()


async def test_fetch_whose_callers_all_left_finishes_quietly() -> None:
    c: Coalescer[str, str] = Coalescer()

    async def fail() -> str:
        await asyncio.sleep(0.02)
        raise RuntimeError("nobody is listening")

    caller = asyncio.ensure_future(c.run("k", fail))
    await asyncio.sleep(0.005)
    caller.cancel()
    await asyncio.sleep(0.05)  # filterwarnings=error: a "never retrieved" warning would fail this test
    assert len(c) == 0


async def test_the_fetch_starts_before_handlers_already_queued_run() -> None:
    c: Coalescer[str, int] = Coalescer()
    order: list[str] = []

    async def fetch() -> int:
        order.append("fetch")  # the upstream request would be written here
        await asyncio.sleep(0)
        return 1

    async def other_handler() -> None:
        order.append("other")

    queued = asyncio.ensure_future(other_handler())  # ready before the fetch exists, as a burst's handlers are
    assert await c.run("k", fetch) == (1, False)
    await queued
    assert order == ["fetch", "other"]


async def test_the_eager_first_step_runs_as_the_fetchs_own_task() -> None:
    c: Coalescer[str, int] = Coalescer()
    seen: list[asyncio.Task[object] | None] = []

    async def fetch() -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0.01)
        seen.append(asyncio.current_task())
        return 1

    caller = asyncio.current_task()
    task = c.start("k", fetch)
    assert seen == [task] and asyncio.current_task() is caller
    assert await task == 1 and seen == [task, task]


async def test_a_fetch_that_fails_or_returns_before_its_first_await_reaches_every_caller() -> None:
    c: Coalescer[str, int] = Coalescer()

    async def fail() -> int:
        raise ValueError("at once")

    async def value() -> int:
        return 7

    results = await asyncio.gather(*(c.run("k", fail) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError] * 3
    assert [r for r, _ in await asyncio.gather(*(c.run("v", value) for _ in range(3)))] == [7, 7, 7]
    assert len(c) == 0


async def test_a_fetch_started_from_a_plain_callback_runs_its_first_step_there_as_its_own_task() -> None:
    """The fast lane starts fills from a connection's data_received, where no task is current."""
    c: Coalescer[str, int] = Coalescer()
    seen: list[object] = []

    async def fetch() -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0.01)
        return 2

    started: list[asyncio.Task[int]] = []
    asyncio.get_running_loop().call_soon(lambda: (started.append(c.start("k", fetch)),
                                                  seen.append(asyncio.current_task())))
    await asyncio.sleep(0)
    assert seen == [started[0], None]  # stepped in place, as its own task; no task current after it
    assert await started[0] == 2
