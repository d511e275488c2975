"""Parking: a fast-lane request that would only wait for a fill, held on its connection until there is an answer.

Identical cold requests come together (a screen's burst, a herd on one key). Through aiohttp, each follower costs a
request object, a handler task and a response of its own on top of its wait; parked, it costs a callback, and its
answer (the stored copy, as a collapsed slow-path follower gets it) is written from the connection as a hit is.
A request can wait on one of three things:

- the fill for its key, once it is in flight (the coalescer's task): `ProxyHandler.follow` then answers it; when
  the fill's answer is not one it may share, it hands it to aiohttp: marked `RESEND` (personal, `Vary: *`), to be
  passed through on its own as the slow path resends such a follower, or plain (another Vary variant's answer),
  for the slow path to fetch its own variant's, once per variant;
- its own fill, which the fast lane started for it (a ruled miss memory holds nothing for, nothing in flight; with
  Redis the fill asks Redis first): `ProxyHandler.led` then answers it as the slow path answers its leader; an
  answer too large to keep goes to aiohttp with the fill (`LED`), to stream; what Redis held, aiohttp serves;
- before that, the first request for a target not seen yet, which the fast lane handed to aiohttp and
  *announced*: once the handler has dispatched it (the target remembered, its fill started), the requests for
  the same target that arrived meanwhile ask again. An announcement that is never dispatched is let go when its
  request ends otherwise (aiohttp refused it, its client left), and after a quarter of a second at the latest.

    take ─ known, nothing in memory, fill in flight ─> park on the fill ─ done ─> follow ─ answer ─> write
         │                                                  personal, Vary: * ┼> aiohttp: RESEND
         │                                                  another variant's ┴> aiohttp
         ├ ruled, not in memory, no fill in flight ─> lead: park on its own fill ─ done ─> led ─ answer ─> write
         │                                                                        too large to keep ─> aiohttp: LED
         └ not seen yet: announced by another ────> park on it ─ dispatched (or released) ─> take again, once
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from proxy.serving.fill import Fill
from proxy.serving.inbound import Inbound

# On a request the fast lane handed to aiohttp: pass it through, with this Cache-Status detail.
RESEND: Final = web.RequestKey("resend", str)
# On a request the fast lane led: its fill, whose answer was too large to keep, for aiohttp to stream to it.
LED: Final = web.RequestKey("led", Fill)
# Seconds an announcement may wait for its dispatch before its waiters are let go: a dispatch takes a few loop
# turns; one that never comes (aiohttp refused the request, its client left) is released by the listener at once,
# and this bounds what nothing told it of.
_STUCK: Final = 0.25


class Parked:
    """What a parked request waits on: a fill's task (with the request it was read as), or an announcement."""

    __slots__ = ("on", "inb", "leads")

    def __init__(self, on: asyncio.Future[Any], inb: Inbound | None = None, *, leads: bool = False) -> None:
        self.on = on
        self.inb = inb  # None: parked on an announcement, to be read and asked again
        self.leads = leads  # the fill is this request's own (the fast lane started it): it gets the leader's answer


class Parking:
    """The announcements of targets handed to aiohttp and not dispatched yet."""

    def __init__(self) -> None:
        self._announced: dict[str, tuple[asyncio.Future[None], float]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._announced)

    def wait(self, target: str) -> Parked | None:
        """Park on the announcement of `target` if another request announced it; else announce it (None)."""
        found = self._announced.get(target)
        if found is not None:
            return Parked(found[0])
        loop = asyncio.get_running_loop()
        self._announced[target] = (loop.create_future(), loop.time())
        if self._sweep is None:
            self._sweep = loop.call_later(_STUCK, self._release_stuck)
        return None

    def dispatched(self, target: str) -> None:
        """The handler has dispatched a request for `target`: whoever waits on its announcement asks again (in the
        loop's next round, once the handler has gone as far as its first suspension: its fill started)."""
        found = self._announced.pop(target, None)
        if found is not None:
            found[0].set_result(None)

    def _release_stuck(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._sweep = None
        for target, (_, since) in list(self._announced.items()):
            if now - since >= _STUCK:
                self.dispatched(target)
        if self._announced:
            self._sweep = loop.call_later(_STUCK, self._release_stuck)
