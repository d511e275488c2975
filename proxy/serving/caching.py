"""The one driver of every caching path: find the entry, run the one decision over it, act on the answer.

    tiers.find(key, Vary) -> policy.decision.decide(entry, now) -> Hit        -> lane.answer(entry)
                                                                  ServeStale -> lane.answer(entry) + refresh once
                                                                  Revalidate -> lane.fetch (conditions)
                                                                  Fetch      -> lane.fetch
                             upstream failed (refused, timeout, 5xx) within stale-if-error -> lane.answer(stale)

A lane is what differs between ruled routes and routes the origin's headers govern: how an answer is judged
storable, how a stored one is written back, how a fetch reaches the upstream. Everything else is here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, assert_never

from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.tiers import Held, TieredCache
from proxy.concurrency.coalescer import Coalescer
from proxy.errors import UpstreamBusy, UpstreamError, UpstreamTimeout
from proxy.policy.cache_status import CacheStatus, hit
from proxy.policy.decision import Fetch, Hit, Revalidate, ServeStale, decide
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import hit_unchanged_until, usable_on_error
from proxy.policy.keys import variant_key
from proxy.policy.validators import revalidation_headers
from proxy.serving.fill import Fill, Filler, Judge
from proxy.serving.inbound import Inbound
from proxy.telemetry.metrics import Metrics

# How a finished request leaves: the handler's one exit step (metrics, access log), and how a collapsed waiter is
# sent upstream on its own; both lanes are handed these.
Done = Callable[[Inbound, web.StreamResponse, CacheStatus | str, str, float | None], web.StreamResponse]
Resend = Callable[[Inbound, web.BaseRequest, str], Awaitable[web.StreamResponse]]

ERROR_STATUSES: Final = frozenset({500, 502, 503, 504})  # RFC 5861 4: what stale-if-error stands in for


def flight_of(inb: Inbound, stale: CachedResponse | None) -> str:
    """What a fill for this request coalesces on: its key, or its Vary variant's when the stale copy says which
    request headers select it, so that two variants' refreshes neither wait for nor answer each other."""
    if stale is None or not stale.vary:
        return inb.key
    return variant_key(inb.key, stale.vary, inb.headers)


def error_status(exc: UpstreamError) -> int:
    return 504 if isinstance(exc, UpstreamTimeout) else 503 if isinstance(exc, UpstreamBusy) else 502


class Lane(Protocol):
    """A caching path: ruled routes (serving/ruled.py) or the origin's own headers (serving/origin_cache.py)."""

    def revalidate(self, inb: Inbound) -> bool:
        """The client asked past the cache, and this path honours that."""
        ...

    def validators(self, inb: Inbound) -> bool:
        """A fill can carry the origin's conditions (a batch call cannot)."""
        ...

    def judge(self, inb: Inbound) -> Judge:
        """How an upstream answer for this request is judged storable."""
        ...

    def send_host(self, inb: Inbound) -> bool:
        """The Host is part of this request's key, so the fill may carry X-Forwarded-Host."""
        ...

    def stale_on(self, inb: Inbound) -> frozenset[int]:
        """The origin statuses a stale copy answers for within stale-if-error."""
        ...

    def answer(self, inb: Inbound, entry: CachedResponse, status: CacheStatus, age: float | None,
               *, upstream_s: float | None = None) -> web.StreamResponse:
        """A stored entry written back to this client."""
        ...

    async def fetch(self, inb: Inbound, request: web.BaseRequest, decision: Revalidate | Fetch,
                    stale: CachedResponse | None) -> web.StreamResponse:
        """Go upstream for this request; may call `Caching.stale_for` when the origin answers with an error."""
        ...


class Caching:
    """Runs the decision for a key and acts on it; the coalescer makes every fill and refresh one task per key."""

    def __init__(self, tiers: TieredCache, filler: Filler, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.tiers, self.filler, self.metrics, self.clock = tiers, filler, metrics, clock
        self.coalescer: Coalescer[str, Fill] = Coalescer()

    async def serve(self, inb: Inbound, request: web.BaseRequest, lane: Lane) -> web.StreamResponse:
        entry = self.tiers.local(inb.key)  # a memory hit costs no await
        if entry is None or entry.is_marker:
            entry = await self.tiers.find(inb.key, inb.headers)
        now = self.clock()
        revalidate = inb.forced or lane.revalidate(inb)
        decision = decide(entry, now, revalidate=revalidate, validators=lane.validators(inb) and not inb.forced)
        match decision:
            case Hit(entry=e):
                return _hit(inb, lane, e, now)
            case ServeStale(entry=e):
                self.refresh(inb, lane, e)
                status = CacheStatus(fwd="stale", ttl=int(e.expires_at - now), detail=("stale-while-revalidate",))
                return lane.answer(inb, e, status, now - e.stored_at)
            case Revalidate() | Fetch():
                stale = decision.entry if isinstance(decision, Revalidate) else decision.stale
                if stale is not None and not revalidate:
                    self.metrics.expired_miss(inb.route, now - stale.expires_at)
                try:
                    return await lane.fetch(inb, request, decision, stale)
                except UpstreamError as exc:
                    if (resp := self.stale_for(inb, lane, stale, error_status(exc), transport=True)) is not None:
                        return resp
                    raise
            case _:
                assert_never(decision)

    def fresh(self, inb: Inbound, lane: Lane) -> tuple[web.StreamResponse, Held, float] | None:
        """`serve` for the one case that needs no await: a fresh hit in memory, decided as `serve` decides it
        (the fast lane's question), with what it was decided from: the entries memory held, and until when the
        same request would read the same from them. None for anything else, which `serve` then answers."""
        entry, held = self.tiers.local_variant(inb.key, inb.headers)
        if entry is None or inb.forced or lane.revalidate(inb):
            return None
        now = self.clock()
        decision = decide(entry, now, validators=lane.validators(inb))
        if not isinstance(decision, Hit):
            return None
        return _hit(inb, lane, entry, now), held, hit_unchanged_until(entry, now)

    def joinable(self, inb: Inbound, lane: Lane) -> asyncio.Task[Fill] | None:
        """The fill in flight that `serve` would do nothing but join for this request: memory holds nothing for its
        key (so no stale copy to answer or revalidate), nothing asks past the cache, and the key's fill has started.
        The fast lane parks such a request on it (serving/parking.py) instead of handing it to aiohttp to wait."""
        if inb.forced or lane.revalidate(inb) or self.tiers.local(inb.key) is not None:
            return None
        return self.coalescer.task(inb.key)

    def refresh(self, inb: Inbound, lane: Lane, stale: CachedResponse) -> None:
        """Refresh a key in the background, once however many requests see it stale (RFC 5861 3)."""
        inb.detach()
        conditions = self.conditions(inb, lane, stale)
        self.coalescer.start(flight_of(inb, stale), lambda: self.filler.once(
            inb, inb.key, lane.judge(inb), stale=stale, conditions=conditions, send_host=lane.send_host(inb)))

    def conditions(self, inb: Inbound, lane: Lane, stale: CachedResponse | None) -> dict[str, str]:
        """The origin's own validators of the stale copy, where the lane's fill can carry them."""
        if stale is None or not lane.validators(inb):
            return {}
        return revalidation_headers(CIMultiDict(stale.headers))

    def may_serve_stale(self, inb: Inbound, lane: Lane, stale: CachedResponse | None, status: int) -> bool:
        """Whether an origin error status may be answered from the stale copy (before anything is sent)."""
        return stale is not None and status in lane.stale_on(inb) and usable_on_error(stale, self.clock())

    def stale_for(self, inb: Inbound, lane: Lane, stale: CachedResponse | None, status: int,
                  *, transport: bool = False, upstream_s: float | None = None) -> web.StreamResponse | None:
        """The stale copy in place of an upstream failure (refused, timeout, or an error status the lane lists), when
        its stale-if-error window allows (RFC 5861 4); None otherwise."""
        if not (transport or self.may_serve_stale(inb, lane, stale, status)) or stale is None:
            return None
        now = self.clock()
        if not usable_on_error(stale, now):
            return None
        cs = CacheStatus(fwd="stale", fwd_status=status, ttl=int(stale.expires_at - now), detail=("stale-if-error",))
        return lane.answer(inb, stale, cs, now - stale.stored_at, upstream_s=upstream_s)


def _hit(inb: Inbound, lane: Lane, entry: CachedResponse, now: float) -> web.StreamResponse:
    """A fresh entry written back, as `serve` and `fresh` both answer it."""
    return lane.answer(inb, entry, hit(int(entry.expires_at - now)), now - entry.stored_at)
