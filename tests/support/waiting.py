"""Waiting for what happens in the background (a Redis write, an event, another process), polled: a test waits
as long as the thing takes, and a timeout only bounds the failure case."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0) -> None:
    """Poll `check` (plain or async) every 10 ms until it is true; fail once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """The same for code outside an event loop (process start-up, a cluster settling): blocks the thread."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
