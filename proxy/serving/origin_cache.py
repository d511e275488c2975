"""The lane of requests no rule matches, under `[defaults] unruled = "origin"`: a shared cache run by the origin's
own headers.

RFC 9111 as nginx and Varnish apply it to a backend that does speak HTTP caching: store what max-age, s-maxage
or Expires allow, honour Vary, no-cache, must-revalidate and Age, revalidate with the origin's validators, serve
stale within the origin's stale-while-revalidate and stale-if-error, never store without explicit freshness
(heuristic freshness is off). A miss streams through to its client; identical misses meanwhile wait for it (one
upstream call), then take what it stored, or, when nothing could be stored, go upstream on their own (Varnish's
waiting list and hit-for-miss). A storable answer is kept up to the memory tier's per-entry cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.policy.cache_status import CacheStatus
from proxy.policy.decision import Fetch, Revalidate
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import client_asks_revalidation
from proxy.policy.keys import url_tag
from proxy.policy.origin_policy import OriginPolicy, origin_policy
from proxy.policy.validators import keep_for
from proxy.serving import passthrough
from proxy.serving.answer import from_entry
from proxy.serving.caching import ERROR_STATUSES, Caching, Done, Resend, flight_of
from proxy.serving.fill import Judge, Terms
from proxy.serving.headers import NOBODY, Forwarding, end_to_end
from proxy.serving.inbound import Inbound

ROUTE: Final = "-"  # how unruled traffic is labelled in metrics and entries


class OriginLane:
    """GET and HEAD without a rule; everything else without a rule is plain pass-through (see handler)."""

    def __init__(self, caching: Caching, done: Done, resend: Resend, degraded: Callable[[CacheStatus], str], *,
                 max_entry_bytes: int, trust: Forwarding = NOBODY, targets: Sequence[str] = ()) -> None:
        self.caching, self.done, self.resend, self.degraded = caching, done, resend, degraded
        self.max_entry_bytes = max_entry_bytes
        self.trust = trust
        self.targets = tuple(targets)  # targeted cache-control fields (RFC 9213), first valid one wins
        self._waiting: dict[str, asyncio.Future[bool]] = {}  # key -> the miss streaming now: did it store?

    def revalidate(self, inb: Inbound) -> bool:
        return client_asks_revalidation(inb.headers)

    def validators(self, inb: Inbound) -> bool:
        return inb.method == "GET"

    def send_host(self, inb: Inbound) -> bool:
        return True  # the key holds the Host (RFC 9111 keys on the whole target URI)

    def stale_on(self, inb: Inbound) -> frozenset[int]:
        return ERROR_STATUSES

    def judge(self, inb: Inbound) -> Judge:
        clock = self.caching.clock
        requested_at = clock()  # a judge is made before the upstream is asked: the response delay counts as age

        def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> Terms | str:
            policy = origin_policy(status, headers, inb.headers, clock(), targets=self.targets,
                                   requested_at=requested_at)
            return policy if isinstance(policy, str) else _terms(policy, inb, headers)

        return judge

    def answer(self, inb: Inbound, entry: CachedResponse, status: CacheStatus, age: float | None,
               *, upstream_s: float | None = None) -> web.StreamResponse:
        text = self.degraded(status)
        return self.done(inb, from_entry(inb.headers, entry, text, age, method=inb.method), text, status.outcome,
                         upstream_s)

    async def fetch(self, inb: Inbound, request: web.BaseRequest, decision: Revalidate | Fetch,
                    stale: CachedResponse | None) -> web.StreamResponse:
        if inb.method == "GET" and stale is not None:  # buffered, so a cut body still leaves the stale copy to answer
            conditions = decision.conditions if isinstance(decision, Revalidate) else {}
            return await self._refill(inb, request, stale, conditions)
        if (ahead := self._waiting.get(inb.key)) is not None and inb.method == "GET":
            stored = await asyncio.shield(ahead)  # a miss for this key is streaming: wait for what it stores
            if stored:
                if (entry := await self.caching.tiers.find(inb.key, inb.headers)) is not None:
                    now = self.caching.clock()
                    status = CacheStatus(fwd="miss", fwd_status=entry.status, collapsed=True)
                    return self.answer(inb, entry, status, now - entry.stored_at)
                # It stored another Vary variant: wait for the miss of this one's, or be it (one call per variant).
                return await self.fetch(inb, request, decision, stale)
        return await self._stream(inb, request, stale)

    async def _refill(self, inb: Inbound, request: web.BaseRequest, stale: CachedResponse,
                      conditions: dict[str, str]) -> web.StreamResponse:
        """Fetch past a stored answer (with the origin's validators when it has them), once for every client asking
        at once; a 304 refreshes it (RFC 9111 4.3.4), an error leaves it for stale-if-error."""
        caching = self.caching
        t0 = time.perf_counter()
        fill, joined = await caching.coalescer.run(flight_of(inb, stale), lambda: caching.filler.once(
            inb, inb.key, self.judge(inb), stale=stale, conditions=conditions, send_host=True, forced=True))
        upstream_s = time.perf_counter() - t0
        if joined and not fill.serves(inb.headers):  # the origin's Vary changed, or `Vary: *`: its own answer
            return await self.resend(inb, request, f"uncacheable-{fill.reason or 'vary'}")
        fwd = "stale" if conditions else "request" if self.revalidate(inb) else "miss"
        if fill.status in ERROR_STATUSES and not fill.stored:
            if (resp := caching.stale_for(inb, self, stale, fill.status, upstream_s=upstream_s)) is not None:
                return resp
        if fill.revalidated:
            use = fill.entry or stale
            status = CacheStatus(fwd="stale", fwd_status=304, stored=fill.stored, collapsed=joined)
            return self.answer(inb, use, status, caching.clock() - use.stored_at, upstream_s=upstream_s)
        if joined and fill.entry is None and fill.personal:
            return await self.resend(inb, request, "uncacheable-personal")
        detail = (fill.reason,) if fill.reason and not fill.stored else ()
        status = CacheStatus(fwd=fwd, fwd_status=fill.status, stored=fill.stored, collapsed=joined, detail=detail)
        if fill.overflow is not None:
            text = self.degraded(status)
            resp = await passthrough.stream_overflow(request, fill.overflow, fill.headers, text)
            return self.done(inb, resp, text, status.outcome, upstream_s)
        out = fill.entry or CachedResponse(status=fill.status, headers=list(fill.headers.items()), body=fill.body,
                                           stored_at=caching.clock(), ttl=0)
        return self.answer(inb, out, status, 0.0, upstream_s=upstream_s)

    async def _stream(self, inb: Inbound, request: web.BaseRequest,
                      stale: CachedResponse | None) -> web.StreamResponse:
        """The miss itself: streamed to its client, teed into the cache when the origin allows; identical misses
        that arrive meanwhile wait on it."""
        lead = inb.method == "GET" and inb.key not in self._waiting
        done: asyncio.Future[bool] | None = None
        if lead:
            done = self._waiting[inb.key] = asyncio.get_running_loop().create_future()
        stored = False
        try:
            since, judge = self.caching.tiers.generation, self.judge(inb)
            resp, tee = await passthrough.forward(request, self.caching.filler.upstream,
                                                  self._decider(inb, stale), trust=self.trust)
            if tee is not None and tee.headers is not None and (body := tee.body) is not None:
                verdict = judge(resp.status, tee.headers, body)
                if isinstance(verdict, Terms):
                    stored = self.caching.filler.store(inb.key, inb.headers, resp.status,
                                                       end_to_end(tee.headers).items(), body, verdict,
                                                       since=since) is not None
        except passthrough.Divert as divert:
            answer = self.caching.stale_for(inb, self, stale, divert.status)
            assert answer is not None  # the decider diverts only when a stale copy may answer
            return answer
        finally:
            if done is not None:
                del self._waiting[inb.key]
                done.set_result(stored)
        took = time.perf_counter() - inb.started
        self.caching.metrics.upstream_call(ROUTE, resp.status, took)  # streamed: the exchange was the upstream's
        return self.done(inb, resp, resp.headers.get("Cache-Status", ""), "bypass" if tee is None else "miss", took)

    def _decider(self, inb: Inbound, stale: CachedResponse | None) -> passthrough.Decide:
        """Decide, from the upstream's headers alone, whether this answer will be kept and what to tell the client."""
        refetch = stale is not None and self.revalidate(inb)  # a stored answer existed, but the client asked past it

        def decide(status: int, headers: CIMultiDictProxy[str]) -> tuple[str, passthrough.Tee | None]:
            if status in ERROR_STATUSES and self.caching.may_serve_stale(inb, self, stale, status):
                raise passthrough.Divert(status)
            fwd = "request" if refetch else "miss"
            if inb.method != "GET":
                return str(CacheStatus(fwd=fwd, fwd_status=status, detail=("head",))), None
            policy = origin_policy(status, headers, inb.headers, self.caching.clock(), targets=self.targets)
            if isinstance(policy, str):
                return str(CacheStatus(fwd=fwd, fwd_status=status, detail=(policy,))), None
            length = headers.get("Content-Length")
            if headers.get("Content-Encoding") and "accept-encoding" not in policy.vary:
                return str(CacheStatus(fwd=fwd, fwd_status=status, detail=("encoded-without-vary",))), None
            if length is not None and length.isdigit() and int(length) > self.max_entry_bytes:
                return str(CacheStatus(fwd=fwd, fwd_status=status, detail=("too-large",))), None
            return str(CacheStatus(fwd=fwd, fwd_status=status, stored=True)), passthrough.Tee(self.max_entry_bytes)

        return decide


def _terms(policy: OriginPolicy, inb: Inbound, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> Terms:
    return Terms(ttl=policy.ttl, route=ROUTE, stale_while_revalidate=policy.stale_while_revalidate,
                 stale_if_error=policy.stale_if_error, vary=policy.vary, tags=(url_tag(inb.raw_path),),
                 keep=keep_for(headers), age=policy.age, omit=policy.omit)  # age: RFC 9111 4.2.3
