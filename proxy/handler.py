"""The data path, top to bottom: rule -> key -> tiers -> coalesce -> upstream -> store -> respond."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from . import forward
from .access_log import AccessLog
from .batch_merge import BatchMerge
from .batch_route import batch_routes
from .coalescer import Coalescer
from .entry import CachedResponse
from .errors import UpstreamError, UpstreamTimeout
from .freshness import (
    State,
    private_request_reason,
    state,
    stored_headers,
    unstorable_reason,
    usable_on_error,
)
from .headers import VIA, add_forwarding, end_to_end
from .keys import cache_key, tags_for
from .metrics import Metrics
from .rules import CompiledRule, RuleSet, field_value
from .tiers import TieredCache
from .upstream import UpstreamClient

log = logging.getLogger("sidecache")

# A fill must not carry one client's conditions or ranges: its answer is shared by everyone who waits on it.
_FILL_DROP: Final = (
    "Host", "Content-Length", "Accept-Encoding", "If-None-Match", "If-Modified-Since", "If-Match",
    "If-Unmodified-Since", "If-Range", "Range",
)
# Reasons an answer belongs to the one client that asked: collapsed waiters must ask for their own.
_PERSONAL: Final = frozenset({"set-cookie", "private", "no-store"})
_MAX_MERGE_BODY: Final = 1024 * 1024  # a client's batch body read whole to merge it; larger ones stream through


@dataclass(frozen=True, slots=True)
class Fill:
    """One upstream answer for a key, shared by the leader and every collapsed waiter."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    stored: bool
    reason: str | None  # why it was not stored
    batch_size: int | None = None  # a batched rule's fill: items in the batch that answered it, 0 for a single call
    collapsed: bool = False  # another process fetched it (Redis lease); this one read its stored entry


class ProxyHandler:
    """The one handler of the proxy listener (aiohttp's low-level web.Server: no router, no middleware)."""

    def __init__(
        self,
        rules: RuleSet,
        tiers: TieredCache,
        upstream: UpstreamClient,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.tiers = tiers
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.coalescer: Coalescer[str, Fill] = Coalescer()
        self.access_log: AccessLog | None = None  # None (off) costs one test per request
        self.batches = batch_routes(rules, upstream, metrics)  # rule name -> its [route.batch], behind the coalescer
        merges = (BatchMerge(b, tiers, clock) for b in self.batches.values())
        # A client's own call to a batch endpoint (no rule matches it): cached items answered here (batch_merge.py).
        self.incoming = {m.target: m for m in reversed(list(merges)) if m.mergeable}

    def use_rules(self, rules: RuleSet) -> None:
        """Swap in reloaded rules: one assignment, so each request sees either the old set or the new one."""
        self.rules = rules

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        matched = self.rules.match(request.method, request.path)
        if matched is None:
            if (merge := self.incoming.get((request.method, request.path))) is not None:
                return await self._merge(request, merge, started)
            return await self._pass(request, "-", "no-rule", started)
        rule, params = matched
        if not rule.cacheable or request.method not in ("GET", "HEAD"):
            return await self._pass(request, rule.name, "rule-pass", started)
        if (private := private_request_reason(request.headers, rule)) is not None:
            return await self._pass(request, rule.name, private, started)
        key = cache_key(rule, params, request.query, request.headers)
        entry = self.tiers.local(key) or await self.tiers.shared(key)
        now = self.clock()
        if entry is not None:
            st = state(entry, now)
            if st is State.FRESH:
                status = f"sidecache; hit; ttl={int(entry.expires_at - now)}"
                return self._answer(request, rule, params, entry, status, "hit", started, age=now - entry.stored_at)
            if st is State.STALE_REVALIDATE:
                self.coalescer.start(key, lambda: self._fill_once(request, rule, params, key))
                status = f"sidecache; fwd=stale; ttl={int(entry.expires_at - now)}; detail=stale-while-revalidate"
                return self._answer(request, rule, params, entry, status, "stale", started, age=now - entry.stored_at)
            self.metrics.expired_miss(rule.name, now - entry.expires_at)
        fill_started = time.perf_counter()
        try:
            fill, joined = await self.coalescer.run(key, lambda: self._fill_once(request, rule, params, key))
        except UpstreamError as exc:
            if entry is not None and usable_on_error(entry, self.clock()):
                now = self.clock()
                status = (f"sidecache; fwd=stale; fwd-status={_error_status(exc)}; ttl={int(entry.expires_at - now)}; "
                          "detail=stale-if-error")
                return self._answer(request, rule, params, entry, status, "stale", started, age=now - entry.stored_at)
            return self._error(rule.name, exc, started, request)
        joined = joined or fill.collapsed
        if joined and fill.reason in _PERSONAL:
            return await self._pass(request, rule.name, f"uncacheable-{fill.reason}", started)
        outcome = "collapsed" if joined else "batched" if fill.batch_size else "miss"
        detail = fill.reason or ("batched" if fill.batch_size else "batch-fallback" if fill.batch_size == 0 else None)
        status = f"sidecache; fwd=miss; fwd-status={fill.status}" + (
            "; collapsed" if joined else "") + ("; stored" if fill.stored and not joined else "") + (
            f"; detail={detail}" if detail else "") + (f"; batch-size={fill.batch_size}" if fill.batch_size else "")
        headers = fill.headers.copy()
        return self._respond(request, rule, params, fill.status, headers, fill.body, status, outcome, started,
                             upstream_s=time.perf_counter() - fill_started)

    async def _fill_once(self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], key: str) -> Fill:
        """`_fill` under the key's Redis lease: one process of all that share Redis fetches, the others adopt."""
        return await self.tiers.fill_once(key, lambda: self._fill(request, rule, params, key), _adopt)

    async def _fill(self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], key: str) -> Fill:
        """Fetch for everyone waiting on key and store what may be stored; runs as its own task."""
        headers = add_forwarding(
            end_to_end(request.headers, drop=_FILL_DROP), client_ip=request.remote, proto=request.scheme,
            host=request.host,
        )
        headers["Accept-Encoding"] = "identity"  # one stored body that every client can read
        t0 = time.perf_counter()
        batch, batch_size = self.batches.get(rule.name), None
        try:
            if batch is None:
                resp = await self.upstream.fetch("GET", request.raw_path, headers)
            else:  # counts its own upstream calls: one batch call answers many fills
                resp, batch_size = await batch.fetch(key, params, request.query, request.raw_path, headers)
        except UpstreamError as exc:
            self.metrics.upstream_error(rule.name, type(exc).__name__)
            raise
        if batch is None:
            self.metrics.upstream_call(rule.name, resp.status, time.perf_counter() - t0)
        out_headers = end_to_end(resp.headers, drop=("Content-Length",))
        reason = unstorable_reason(resp.status, resp.headers, resp.body, rule)
        stored = False
        if reason is None:
            r = rule.route
            entry = CachedResponse(
                status=resp.status, headers=stored_headers(out_headers.items()), body=resp.body,
                stored_at=self.clock(), ttl=r.ttl, stale_while_revalidate=r.stale_while_revalidate,
                stale_if_error=r.stale_if_error, tags=tags_for(rule, params, request.query, request.headers),
                route=rule.name,
            )
            stored = self.tiers.store(key, entry)
            if not stored:
                reason = "too-large"
        if reason is not None:
            self.metrics.not_storable(rule.name, reason)
        return Fill(resp.status, out_headers, resp.body, stored, reason, batch_size)

    async def _merge(self, request: web.BaseRequest, merge: BatchMerge, started: float) -> web.StreamResponse:
        """A client's own batch call: cached items from the tiers, the others upstream, one reply."""
        if request.content_length is None or request.content_length > _MAX_MERGE_BODY:
            return await self._pass(request, merge.rule.name, "batch-unmergeable", started)  # streamed as it is
        headers = add_forwarding(
            end_to_end(request.headers, drop=_FILL_DROP), client_ip=request.remote, proto=request.scheme,
            host=request.host,
        )
        try:  # batch_merge counts its own upstream calls and errors
            got = await merge.answer(await request.read(), request.headers, headers, request.raw_path)
        except UpstreamError as exc:
            return self._error(merge.rule.name, exc, started)
        got.headers["Cache-Status"] = got.cache_status
        got.headers.add("Via", VIA)
        self.metrics.request(merge.rule.name, got.outcome, time.perf_counter() - started)
        return web.Response(status=got.status, headers=got.headers, body=got.body)

    def _answer(
        self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], entry: CachedResponse,
        cache_status: str, outcome: str, started: float, *, age: float,
    ) -> web.Response:
        headers = CIMultiDict(entry.headers)
        headers["Age"] = str(max(0, int(age)))
        return self._respond(request, rule, params, entry.status, headers, entry.body, cache_status, outcome, started)

    def _respond(
        self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], status: int,
        headers: CIMultiDict[str], body: bytes, cache_status: str, outcome: str, started: float,
        *, upstream_s: float | None = None,
    ) -> web.Response:
        if rule.echo:
            body = _echo(body, rule, params, request)
        if self.tiers.degraded:  # RFC 9211 detail: say the shared tier was skipped
            cache_status += "; detail=redis-unavailable"
        headers["Cache-Status"] = cache_status
        headers.add("Via", VIA)
        self.metrics.request(rule.name, outcome, time.perf_counter() - started)
        if self.access_log is not None:
            self.access_log.write(request.method, request.raw_path, rule.name, cache_status, status, len(body),
                                  time.perf_counter() - started, upstream_s)
        return web.Response(status=status, headers=headers, body=body)

    async def _pass(self, request: web.BaseRequest, route: str, detail: str, started: float) -> web.StreamResponse:
        try:
            resp, _ = await forward.forward(request, self.upstream, f"sidecache; fwd=bypass; detail={detail}")
        except UpstreamError as exc:
            self.metrics.upstream_error(route, type(exc).__name__)
            return self._error(route, exc, started, request)
        self.metrics.request(route, "bypass", time.perf_counter() - started)
        if self.access_log is not None:  # streamed: the whole exchange was the upstream's
            took = time.perf_counter() - started
            self.access_log.write(request.method, request.raw_path, route, resp.headers.get("Cache-Status", ""),
                                  resp.status, resp.body_length, took, took)
        return resp

    def _error(
        self, route: str, exc: UpstreamError, started: float, request: web.BaseRequest | None = None
    ) -> web.Response:
        status = _error_status(exc)
        log.warning("route %s: %s", route, exc)
        self.metrics.request(route, "error", time.perf_counter() - started)
        kind = "upstream_timeout" if status == 504 else "upstream_unavailable"
        body = msgspec.json.encode({"error": kind, "message": str(exc), "status": status})
        cache_status = f"sidecache; fwd=miss; detail={kind.replace('_', '-')}"
        if self.access_log is not None and request is not None:
            took = time.perf_counter() - started
            self.access_log.write(request.method, request.raw_path, route, cache_status, status, len(body), took, None)
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={"Cache-Status": cache_status, "Via": VIA})


def _error_status(exc: UpstreamError) -> int:
    return 504 if isinstance(exc, UpstreamTimeout) else 502


def _adopt(entry: CachedResponse) -> Fill:
    """Another process's fill, read back from Redis, answers this process's waiters as a collapsed fill."""
    return Fill(entry.status, CIMultiDict(entry.headers), entry.body, True, None, collapsed=True)


def _echo(body: bytes, rule: CompiledRule, params: dict[str, str], request: web.BaseRequest) -> bytes:
    """Write the caller's own ids back into a shared JSON body (the rule's `echo` fields)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    changed = False
    for f in rule.echo:
        value: object = field_value(f, params, request.query, request.headers)
        old = doc.get(f.name)
        if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, str) and value.isdigit():
            value = int(value)
        if old != value:
            doc[f.name] = value
            changed = True
    return msgspec.json.encode(doc) if changed else body

