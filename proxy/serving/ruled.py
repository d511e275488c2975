"""The lane of routes a rule governs: the rule says what is stored, for how long, keyed on what.

The origin still has its say where sharing would be wrong: its `Vary` picks variants (CORS's `Vary: Origin`
included), and `Vary: *` is never stored. A fill's own answer goes to the client that made it; collapsed waiters
get the stored copy, or, when nothing was stored and the answer was personal, are sent upstream on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.policy.cache_status import CacheStatus
from proxy.policy.decision import Fetch, Revalidate
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import client_wants_revalidation, rule_ttl, stored_headers, unstorable_reason
from proxy.policy.keys import tags_for, variant_key
from proxy.policy.origin_policy import vary_names
from proxy.policy.validators import derived_etag, keep_for
from proxy.serving.answer import StoredAnswer, echo, etag_of, from_entry
from proxy.serving.caching import Caching, Done, Resend, flight_of
from proxy.serving.echoes import Echoes
from proxy.serving.fill import Fill, Judge, Terms, found
from proxy.serving.headers import VIA
from proxy.serving.inbound import Inbound
from proxy.serving.passthrough import stream_overflow

Once = Callable[[], Awaitable[Fill]]  # how a fill is started, once for every request that joins it


class RuledLane:
    """Ruled GET and HEAD: the rule decides, the origin's Vary picks variants."""

    def __init__(self, caching: Caching, done: Done, resend: Resend, degraded: Callable[[CacheStatus], str], *,
                 targets: Sequence[str] = ()) -> None:
        self.caching, self.done, self.resend, self.degraded = caching, done, resend, degraded
        self.targets = tuple(targets)  # targeted cache-control fields (RFC 9213): they replace Cache-Control here
        memory = caching.tiers.memory
        self.echoes = Echoes(memory.reserve, memory.max_bytes // 16)  # bodies of rules that echo, with gzip copies

    def revalidate(self, inb: Inbound) -> bool:
        rule = inb.rule
        assert rule is not None
        return client_wants_revalidation(inb.headers, rule)

    def validators(self, inb: Inbound) -> bool:
        return inb.route not in self.caching.filler.batches  # a batch call carries no conditions

    def send_host(self, inb: Inbound) -> bool:
        assert inb.rule is not None
        return any(f.source == "header" and f.name.lower() in ("host", "x-forwarded-host")
                   for f in inb.rule.key_fields or ())

    def stale_on(self, inb: Inbound) -> frozenset[int]:
        assert inb.rule is not None
        return frozenset(inb.rule.route.stale_on_status)

    def judge(self, inb: Inbound) -> Judge:
        rule = inb.rule
        assert rule is not None
        tags = tuple(tags_for(rule, inb.params, inb.query, inb.headers))

        def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> Terms | str:
            now = self.caching.clock()
            if (reason := unstorable_reason(status, headers, body, rule, targets=self.targets, now=now)) is not None:
                return reason
            vary = vary_names(headers)
            if vary is None:
                return "vary-star"
            r = rule.route
            negative = status != 200
            return Terms(ttl=rule_ttl(status, headers, rule, targets=self.targets, now=now), route=rule.name,
                         stale_while_revalidate=0.0 if negative else r.stale_while_revalidate,
                         stale_if_error=r.stale_if_error, vary=vary, tags=tags, derive_etag=not rule.echo,
                         echoed=bool(rule.echo), keep=keep_for(headers) if self.validators(inb) else 0.0)

        return judge

    def answer(self, inb: Inbound, entry: CachedResponse, status: CacheStatus, age: float | None,
               *, upstream_s: float | None = None) -> web.StreamResponse:
        """From a stored entry: the hit path, kept to one header list and no parsing unless the rule echoes.

        `age` None: the entry was fetched for this very request, so it carries no Age (RFC 9111 5.1)."""
        rule = inb.rule
        assert rule is not None
        body = etag = None
        packed = b""
        if rule.echo:
            echoed = self.echoes.get(entry, rule, inb)
            body, etag, packed = echoed.body, echoed.etag, echoed.gzip
        text = self.degraded(status)
        resp = from_entry(inb.headers, entry, text, age, body=body, etag=etag, gzip=packed, method=inb.method)
        return self.done(inb, resp, text, status.outcome, upstream_s)

    def _once(self, inb: Inbound, stale: CachedResponse | None, conditions: dict[str, str]) -> Once:
        """How the fill for this request is started (by the coalescer, once for every request that joins it)."""
        filler = self.caching.filler

        def once() -> Awaitable[Fill]:
            return filler.once(inb, inb.key, self.judge(inb), stale=stale, conditions=conditions,
                               send_host=self.send_host(inb), forced=inb.forced or self.revalidate(inb))

        return once

    def lead(self, inb: Inbound) -> asyncio.Task[Fill]:
        """Start the fill of a request that memory holds nothing for and nothing in flight answers, as `fetch` starts
        it: the fast lane leads such a request itself (serving/parking.py) and answers it with `leader` once it is
        done. With Redis, the task asks Redis first, as the slow path does before it fetches: an entry found there
        ends it (`found`), and the requests parked on it are served by the slow path from memory."""
        once = self._once(inb, None, {})
        tiers = self.caching.tiers
        if tiers.redis is None:
            return self.caching.coalescer.start(flight_of(inb, None), once)

        async def looked_up() -> Fill:
            entry = await tiers.find(inb.key, inb.headers)
            return found(entry) if entry is not None else await once()

        return self.caching.coalescer.start(flight_of(inb, None), looked_up)

    async def fetch(self, inb: Inbound, request: web.BaseRequest, decision: Revalidate | Fetch,
                    stale: CachedResponse | None) -> web.StreamResponse:
        """The coalesced fill, then the answer: the leader gets the upstream's answer whole, waiters the stored copy."""
        caching = self.caching
        conditions = decision.conditions if isinstance(decision, Revalidate) else {}
        t0 = time.perf_counter()
        once = self._once(inb, stale, conditions)
        # A forced refresh never joins an ordinary fill; the stale copy's Vary, when known, picks the variant's.
        flight = flight_of(inb, stale) + ("\x00forced" if inb.forced else "")
        fill, joined = await caching.coalescer.run(flight, once)
        joined = joined or fill.collapsed
        if joined and not fill.serves(inb.headers) and (vary := fill.vary):
            # Another Vary variant's answer (another browser Origin's CORS headers, say): fetched once per variant.
            fill, joined = await caching.coalescer.run(variant_key(flight, vary, inb.headers), once)
            joined = joined or fill.collapsed
        upstream_s = time.perf_counter() - t0
        if joined:
            got = self.follow(inb, fill, stale, upstream_s)
            return await self.resend(inb, request, got) if isinstance(got, str) else got
        resp = self.leader(inb, fill, stale, upstream_s)
        return resp if resp is not None else await self.stream(inb, request, fill, stale, upstream_s)

    def leader(self, inb: Inbound, fill: Fill, stale: CachedResponse | None,
               upstream_s: float) -> web.StreamResponse | None:
        """The answer of the request the fill was for, with no await: what the slow path's leader and a request the
        fast lane led both get. The upstream's answer whole (its cookie is its own) with the stored copy's ETag, or
        the stale copy for an origin error within stale-if-error. None: too large to keep, it streams (`stream`)."""
        rule = inb.rule
        assert rule is not None
        if fill.status >= 500 and not fill.stored:
            resp = self.caching.stale_for(inb, self, stale, fill.status, upstream_s=upstream_s)
            if resp is not None:
                return resp
        if fill.overflow is not None:
            return None
        status = _fill_status(fill, stale, False)
        body = echo(fill.body, rule, inb) if rule.echo else fill.body
        etag = None
        if fill.entry is not None:
            etag = derived_etag(body) if rule.echo else etag_of(fill.entry)
        text = self.degraded(status)
        # Its length and Date are written as every answer's are; the origin's Date is kept.
        headers = [(k, v) for k, v in fill.headers.items()
                   if (low := k.lower()) != "content-length" and low != "date" and not (etag and low == "etag")]
        if etag:
            headers.append(("ETag", etag))
        headers += [("Cache-Status", text), ("Via", VIA)]
        resp = StoredAnswer(fill.status, headers, body, text, fill.headers.get("Date", ""))
        return self.done(inb, resp, text, status.outcome, upstream_s)

    async def stream(self, inb: Inbound, request: web.BaseRequest, fill: Fill, stale: CachedResponse | None,
                     upstream_s: float) -> web.StreamResponse:
        """The leader's answer too large to keep, streamed to it as it arrives, never held whole."""
        assert fill.overflow is not None
        status = _fill_status(fill, stale, False)
        text = self.degraded(status)
        resp = await stream_overflow(request, fill.overflow, fill.headers, text)
        return self.done(inb, resp, text, status.outcome, upstream_s)

    def follow(self, inb: Inbound, fill: Fill, stale: CachedResponse | None,
               upstream_s: float) -> web.StreamResponse | str:
        """A collapsed follower's answer from the fill it joined, with no await: what a slow-path follower and a
        request parked in the fast lane (serving/parking.py) both get. The stored copy (no other client's cookie,
        an ETag); the stale copy for an origin error within stale-if-error; a not-stored answer without anything
        that was the leader's own. A str when it must go upstream on its own instead (the resend's detail): the
        answer was another Vary variant's, `Vary: *`, or personal (hit-for-miss: another client's cookie or
        private answer never reaches this one)."""
        if not fill.serves(inb.headers):
            return f"uncacheable-{fill.reason or 'vary'}"
        if fill.status >= 500 and not fill.stored:
            resp = self.caching.stale_for(inb, self, stale, fill.status, upstream_s=upstream_s)
            if resp is not None:
                return resp
        if fill.entry is None and fill.personal:  # an overflow, too, is personal: the leader's alone to stream
            return f"uncacheable-{fill.reason or 'personal'}"
        status = _fill_status(fill, stale, True)
        if fill.entry is not None:
            return self.answer(inb, fill.entry, status, None, upstream_s=upstream_s)
        rule = inb.rule
        assert rule is not None
        text = self.degraded(status)
        headers = [*stored_headers(fill.headers.items()), ("Cache-Status", text), ("Via", VIA)]
        body = echo(fill.body, rule, inb) if rule.echo else fill.body
        resp = StoredAnswer(fill.status, headers, body, text)
        return self.done(inb, resp, text, status.outcome, upstream_s)

def _fill_status(fill: Fill, stale: CachedResponse | None, joined: bool) -> CacheStatus:
    detail = fill.reason or ("batched" if fill.batch_size else "batch-fallback" if fill.batch_size == 0
                             else "revalidated" if fill.revalidated else None)
    extra = (("batch-size", str(fill.batch_size)),) if fill.batch_size else ()
    return CacheStatus(fwd="stale" if stale is not None else "miss",
                       fwd_status=304 if fill.revalidated else fill.status, collapsed=joined,
                       stored=fill.stored and not joined, detail=(detail,) if detail else (), extra=extra)

