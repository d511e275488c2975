"""The data path, top to bottom: rule -> key -> tiers -> coalesce -> upstream -> store -> respond."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

import msgspec
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.cache.events import Selector
from proxy.cache.tiers import TieredCache
from proxy.concurrency.coalescer import Coalescer
from proxy.config.rules import CompiledRule, RuleSet
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import (
    State,
    client_wants_revalidation,
    private_request_reason,
    state,
    usable_on_error,
)
from proxy.policy.keys import cache_key
from proxy.policy.validators import derived_etag
from proxy.serving import passthrough
from proxy.serving.answer import StoredAnswer, echo, etag_of, from_entry
from proxy.serving.batch_merge import BatchMerge
from proxy.serving.batch_route import batch_routes
from proxy.serving.fill import Fill, Filler, shared_headers
from proxy.serving.headers import VIA
from proxy.serving.origin_cache import OriginCache, origin_key
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.access_log import AccessLog
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("sidecache")

# Reasons an answer belongs to the one client that asked: collapsed waiters must ask for their own.
_PERSONAL: Final = frozenset({"set-cookie", "private", "no-store"})
_MAX_MERGE_BODY: Final = 1024 * 1024  # a client's batch body read whole to merge it; larger ones stream through
_UNSAFE: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TARGETS: Final = 8192  # request targets remembered with their rule and key (the hit path's shortcut)


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
        origin: OriginCache | None = None,
    ) -> None:
        self.rules = rules
        self.origin = origin  # None: `[defaults] unruled = "pass"`
        self.tiers = tiers
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.coalescer: Coalescer[str, Fill] = Coalescer()
        self.filler = Filler(tiers, upstream, metrics, clock)
        self.access_log: AccessLog | None = None  # None (off) costs one test per request
        self.use_rules(rules)

    def use_rules(self, rules: RuleSet) -> None:
        """Swap in (reloaded) rules with the batching they declare; no await between the assignments, so each
        request sees the old generation or the new one. Old batchers finish the windows they have open."""
        batches = batch_routes(rules, self.upstream, self.metrics)  # rule name -> its [route.batch]
        merges = (BatchMerge(b, self.tiers, self.clock) for b in batches.values())
        # A client's own call to a batch endpoint (no rule matches it): cached items answered here (batch_merge.py).
        incoming = {m.target: m for m in reversed(list(merges)) if m.mergeable}
        self.rules, self.batches, self.incoming = rules, batches, incoming
        self.filler.batches = batches
        self._targets: dict[str, tuple[CompiledRule, dict[str, str], str]] = {}

    async def close(self, grace: float = 1.0) -> None:
        """At shutdown: give fills in flight a moment to finish and store, then cancel what is left."""
        await self.coalescer.close(grace)
        for b in self.batches.values():
            await b.batcher.aclose()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        if request.method in ("GET", "HEAD") and (known := self._targets.get(request.raw_path)) is not None:
            rule, params, key = known  # seen before: no path decoding, query parsing, matching or key building
            if private_request_reason(request.headers, rule) is None:
                return await self._cached(request, rule, params, key, started)
        matched = self.rules.match(request.method, request.path)
        if matched is None:
            if (merge := self.incoming.get((request.method, request.path))) is not None:
                return await self._merge(request, merge, started)
            if self.origin is not None and request.method in ("GET", "HEAD") and "Upgrade" not in request.headers:
                return await self._origin(request, started)
            return await self._pass(request, "-", "no-rule", started)
        rule, params = matched
        if not rule.cacheable or request.method not in ("GET", "HEAD"):
            return await self._pass(request, rule.name, "rule-pass", started)
        if (private := private_request_reason(request.headers, rule)) is not None:
            return await self._pass(request, rule.name, private, started)
        key = cache_key(rule, params, request.query, request.headers)
        if not rule.keyed_on_headers:
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()  # bounded; refilled by the targets that keep coming
            self._targets[request.raw_path] = (rule, params, key)
        return await self._cached(request, rule, params, key, started)

    async def _cached(self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], key: str,
                      started: float) -> web.StreamResponse:
        """A cacheable request with its key: tiers, then the coalesced fill, then the answer."""
        entry = self.tiers.local(key) or await self.tiers.shared(key)
        now = self.clock()
        if entry is not None and not client_wants_revalidation(request.headers, rule):
            st = state(entry, now)
            if st is State.FRESH:
                status = f"sidecache; hit; ttl={int(entry.expires_at - now)}"
                return self._answer(request, rule, params, entry, status, "hit", started, now)
            if st is State.STALE_REVALIDATE:
                self.coalescer.start(key, lambda: self.filler.once(request, rule, params, key, entry))
                status = f"sidecache; fwd=stale; ttl={int(entry.expires_at - now)}; detail=stale-while-revalidate"
                return self._answer(request, rule, params, entry, status, "stale", started, now)
            self.metrics.expired_miss(rule.name, now - entry.expires_at)
        fill_started = time.perf_counter()
        try:
            fill, joined = await self.coalescer.run(key, lambda: self.filler.once(request, rule, params, key, entry))
        except UpstreamError as exc:
            if entry is not None and usable_on_error(entry, now := self.clock()):
                status = (f"sidecache; fwd=stale; fwd-status={_error_status(exc)}; ttl={int(entry.expires_at - now)}; "
                          "detail=stale-if-error")
                return self._answer(request, rule, params, entry, status, "stale", started, now)
            return self._error(rule.name, exc, started, request)
        joined = joined or fill.collapsed
        if joined and fill.reason in _PERSONAL:
            return await self._pass(request, rule.name, f"uncacheable-{fill.reason}", started)
        outcome = "collapsed" if joined else "batched" if fill.batch_size else "miss"
        detail = fill.reason or ("batched" if fill.batch_size else "batch-fallback" if fill.batch_size == 0
                                 else "revalidated" if fill.revalidated else None)
        fwd = "stale" if entry is not None else "miss"
        status = f"sidecache; fwd={fwd}; fwd-status={304 if fill.revalidated else fill.status}" + (
            "; collapsed" if joined else "") + ("; stored" if fill.stored and not joined else "") + (
            f"; detail={detail}" if detail else "") + (f"; batch-size={fill.batch_size}" if fill.batch_size else "")
        upstream_s = time.perf_counter() - fill_started
        if joined and fill.entry is not None:  # the stored copy: no other client's cookie, and an ETag
            return self._answer(request, rule, params, fill.entry, status, outcome, started, None,
                                upstream_s=upstream_s)
        headers = fill.headers.copy()  # the client that asked gets the upstream's answer whole
        body = echo(fill.body, rule, params, request) if rule.echo else fill.body
        if fill.entry is not None and (etag := derived_etag(body) if rule.echo else etag_of(fill.entry)):
            headers["ETag"] = etag
        return self._respond(request, rule.name, fill.status, headers, body, status, outcome, started, upstream_s)

    async def _merge(self, request: web.BaseRequest, merge: BatchMerge, started: float) -> web.StreamResponse:
        """A client's own batch call: cached items from the tiers, the others upstream, one reply."""
        if request.content_length is None or request.content_length > _MAX_MERGE_BODY:
            return await self._pass(request, merge.rule.name, "batch-unmergeable", started)  # streamed as it is
        headers = shared_headers(request)
        try:  # batch_merge counts its own upstream calls and errors
            got = await merge.answer(await request.read(), request.headers, headers, request.raw_path)
        except UpstreamError as exc:
            return self._error(merge.rule.name, exc, started, request)
        got.headers["Cache-Status"] = got.cache_status
        got.headers.add("Via", VIA)
        resp = web.Response(status=got.status, headers=got.headers, body=got.body)
        self._count(request, merge.rule.name, got.outcome, resp, started, None)
        return resp

    def _answer(
        self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], entry: CachedResponse,
        cache_status: str, outcome: str, started: float, now: float | None, *, upstream_s: float | None = None,
    ) -> web.StreamResponse:
        """From a stored entry: the hit path, kept to one header list and no parsing unless the rule echoes.

        `now` None: the entry was fetched for this very request, so it carries no Age (RFC 9111 5.1)."""
        body = etag = None
        if rule.echo:
            body = echo(entry.body, rule, params, request)
            etag = derived_etag(body)
        age = None if now is None else now - entry.stored_at
        resp = from_entry(request, entry, self._degraded(cache_status), age, body=body, etag=etag)
        self._count(request, rule.name, outcome, resp, started, upstream_s)
        return resp

    def _respond(
        self, request: web.BaseRequest, route: str, status: int, headers: CIMultiDict[str], body: bytes,
        cache_status: str, outcome: str, started: float, upstream_s: float | None,
    ) -> web.Response:
        """The fill's own answer, to the client whose request made it: as the upstream gave it."""
        headers["Cache-Status"] = self._degraded(cache_status)
        headers.add("Via", VIA)
        resp = web.Response(status=status, headers=headers, body=body)
        self._count(request, route, outcome, resp, started, upstream_s)
        return resp

    def _degraded(self, cache_status: str) -> str:
        """RFC 9211 has one `detail`: while Redis is down its token joins any other with a `+`."""
        if not self.tiers.degraded:
            return cache_status
        if "; detail=" in cache_status:
            head, _, rest = cache_status.partition("; detail=")
            token, sep, tail = rest.partition(";")
            return f"{head}; detail={token}+redis-unavailable{sep}{tail}"
        return cache_status + "; detail=redis-unavailable"

    def _count(self, request: web.BaseRequest, route: str, outcome: str, resp: web.StreamResponse, started: float,
               upstream_s: float | None) -> None:
        took = time.perf_counter() - started
        self.metrics.request(route, outcome, took)
        if self.access_log is not None:
            if isinstance(resp, StoredAnswer):
                status, size = resp.cache_status, resp.size
            else:
                status, size = resp.headers.get("Cache-Status", ""), resp.content_length or 0
            self.access_log.write(request.method, request.raw_path, route, status, resp.status, size, took,
                                  upstream_s)

    async def _origin(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        """No rule, `unruled = "origin"`: the origin's own caching headers decide (unruled.py)."""
        assert self.origin is not None
        try:
            return await self.origin.handle(request, started)
        except UpstreamError as exc:
            self.metrics.upstream_error("-", type(exc).__name__)
            return self._error("-", exc, started, request)

    async def _invalidate(self, request: web.BaseRequest) -> None:
        """After a successful unsafe request, stored answers for its URI are gone (RFC 9111 4.4)."""
        await purge_uri(self.tiers, self.rules, URL(request.raw_path, encoded=True), request.headers)

    async def _pass(self, request: web.BaseRequest, route: str, detail: str, started: float) -> web.StreamResponse:
        try:
            resp, _ = await passthrough.forward(request, self.upstream, f"sidecache; fwd=bypass; detail={detail}")
        except UpstreamError as exc:
            self.metrics.upstream_error(route, type(exc).__name__)
            return self._error(route, exc, started, request)
        took = time.perf_counter() - started
        self.metrics.upstream_call(route, resp.status, took)  # streamed: the whole exchange was the upstream's
        self.metrics.request(route, "bypass", took)
        if request.method in _UNSAFE and resp.status < 400:
            await self._invalidate(request)
        if self.access_log is not None:
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


async def purge_uri(tiers: TieredCache, rules: RuleSet, uri: URL, headers: Mapping[str, str]) -> int:
    """Drop what is stored for one request target: its ruled GET entry and its origin-cached one (with its Vary
    variants, which are reached only through the marker under that key)."""
    keys = [origin_key(uri.raw_path_qs)]
    if (matched := rules.match("GET", uri.path)) is not None and matched[0].cacheable:
        keys.append(cache_key(matched[0], matched[1], uri.query, headers))
    return sum([await tiers.purge(Selector("key", key)) for key in keys])


def _error_status(exc: UpstreamError) -> int:
    return 504 if isinstance(exc, UpstreamTimeout) else 502
