"""Requests no rule matches, under `[defaults] unruled = "origin"`: a shared cache run by the origin's own headers.

RFC 9111 as nginx and Varnish apply it to a backend that does speak HTTP caching: store what max-age, s-maxage
or Expires allow, honour Vary, no-cache, must-revalidate and Age, revalidate with the origin's validators,
never store without explicit freshness (heuristic freshness is off). Answers still stream through; a storable
one is also kept, up to the memory tier's per-entry cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.tiers import TieredCache
from proxy.errors import UpstreamError
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import State, cache_control, state, stored_headers, usable_on_error
from proxy.policy.keys import SEP
from proxy.policy.origin_policy import OriginPolicy, origin_policy, variant_suffix
from proxy.policy.validators import derived_etag, keep_for, revalidation_headers
from proxy.serving import passthrough
from proxy.serving.answer import from_entry
from proxy.serving.headers import add_forwarding, end_to_end
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("sidecache")

ROUTE: Final = "-"  # how unruled traffic is labelled in metrics and entries
_FILL_DROP: Final = ("Host", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range",
                     "Range")


def origin_key(raw_path_qs: str) -> str:
    """The target URI as sent, byte for byte: RFC 9111 keys on the URI, and origins may care about query order."""
    return f"~{SEP}{raw_path_qs}"


def url_tag(raw_path_qs: str) -> str:
    """Every entry of one URI (all its Vary variants) carries this tag, so an unsafe request can drop them all."""
    return f"url:{raw_path_qs}"


def _no_cache_request(headers: CIMultiDictProxy[str]) -> bool:
    """The client asks for an answer checked with the origin (RFC 9111 5.2.1.4; Pragma for HTTP/1.0)."""
    cc = cache_control(headers.get("Cache-Control"))
    return "no-cache" in cc or cc.get("max-age") == "0" or (not cc and headers.get("Pragma") == "no-cache")


class OriginCache:
    """GET and HEAD without a rule; everything else without a rule is plain pass-through (see handler)."""

    def __init__(self, tiers: TieredCache, upstream: UpstreamClient, metrics: Metrics, *, max_entry_bytes: int,
                 clock: Callable[[], float]) -> None:
        self.tiers, self.upstream, self.metrics, self.clock = tiers, upstream, metrics, clock
        self.max_entry_bytes = max_entry_bytes

    async def handle(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        key = origin_key(request.raw_path)
        entry = await self._lookup(key, request.headers)
        now = self.clock()
        bypass = _no_cache_request(request.headers)
        if entry is not None and not bypass and state(entry, now) is State.FRESH:
            status = f"sidecache; hit; ttl={int(entry.expires_at - now)}"
            return self._done(from_entry(request, entry, status, now - entry.stored_at), "hit", started)
        conditions = revalidation_headers(CIMultiDict(entry.headers)) if entry is not None else {}
        try:
            if conditions and request.method == "GET":
                return await self._revalidate(request, key, entry, conditions, started)  # type: ignore[arg-type]
            refetch = bypass and entry is not None  # a stored answer existed, but the client asked past it
            resp, tee = await passthrough.forward(request, self.upstream, self._decider(request, refetch))
        except UpstreamError:
            if entry is not None and usable_on_error(entry, self.clock()):
                now = self.clock()
                status = f"sidecache; fwd=stale; ttl={int(entry.expires_at - now)}; detail=stale-if-error"
                return self._done(from_entry(request, entry, status, now - entry.stored_at), "stale", started)
            raise
        if tee is not None and tee.headers is not None and (body := tee.body) is not None:
            self._store(key, request, resp.status, tee.headers, body)
        took = time.perf_counter() - started
        self.metrics.upstream_call(ROUTE, resp.status, took)  # streamed: the exchange was the upstream's
        self.metrics.request(ROUTE, "bypass" if tee is None else "miss", took)
        return resp

    async def _lookup(self, key: str, headers: CIMultiDictProxy[str]) -> CachedResponse | None:
        entry = self.tiers.local(key) or await self.tiers.shared(key)
        if entry is not None and entry.status == 0:  # a Vary marker: the variant lives under its own key
            vkey = key + variant_suffix(tuple(entry.vary), headers)
            entry = self.tiers.local(vkey) or await self.tiers.shared(vkey)
        return entry

    def _decider(self, request: web.BaseRequest, refetch: bool) -> passthrough.Decide:
        """Decide, from the upstream's headers alone, whether this answer will be kept and what to tell the client."""

        def decide(status: int, headers: CIMultiDictProxy[str]) -> tuple[str, passthrough.Tee | None]:
            fwd = "request" if refetch else "miss"
            if request.method != "GET":
                return f"sidecache; fwd={fwd}; fwd-status={status}; detail=head", None
            policy = origin_policy(status, headers, request.headers, self.clock())
            if isinstance(policy, str):
                return f"sidecache; fwd={fwd}; fwd-status={status}; detail={policy}", None
            length = headers.get("Content-Length")
            if headers.get("Content-Encoding") and "accept-encoding" not in policy.vary:
                return f"sidecache; fwd={fwd}; fwd-status={status}; detail=encoded-without-vary", None
            if length is not None and length.isdigit() and int(length) > self.max_entry_bytes:
                return f"sidecache; fwd={fwd}; fwd-status={status}; detail=too-large", None
            return f"sidecache; fwd={fwd}; fwd-status={status}; stored", passthrough.Tee(self.max_entry_bytes)

        return decide

    async def _revalidate(self, request: web.BaseRequest, key: str, entry: CachedResponse, conditions: dict[str, str],
                          started: float) -> web.StreamResponse:
        """Ask the origin whether the stored answer still holds; a 304 refreshes it (RFC 9111 4.3.4)."""
        headers = add_forwarding(end_to_end(request.headers, drop=_FILL_DROP), client_ip=request.remote,
                                 proto=request.scheme, host=request.host)
        headers.update(conditions)
        t0 = time.perf_counter()
        resp = await self.upstream.fetch("GET", request.raw_path, headers)
        self.metrics.upstream_call(ROUTE, resp.status, time.perf_counter() - t0)
        if resp.status == 304:
            merged = CIMultiDict(entry.headers)
            for k, v in stored_headers(end_to_end(resp.headers).items()):
                merged[k] = v
            fresh = self._store(key, request, entry.status, merged, entry.body)
            use = fresh or entry
            status = "sidecache; fwd=stale; fwd-status=304" + ("; stored" if fresh else "")
            return self._done(from_entry(request, use, status, self.clock() - use.stored_at), "miss", started)
        body_headers = end_to_end(resp.headers, drop=("Content-Length",))
        out = CachedResponse(status=resp.status, headers=list(body_headers.items()), body=resp.body,
                             stored_at=self.clock(), ttl=0)
        stored = self._store(key, request, resp.status, resp.headers, resp.body)
        status = f"sidecache; fwd=stale; fwd-status={resp.status}" + ("; stored" if stored else "")
        return self._done(from_entry(request, stored or out, status, 0.0), "miss", started)

    def _store(self, key: str, request: web.BaseRequest, status: int, headers: CIMultiDictProxy[str] | CIMultiDict[str],
               body: bytes) -> CachedResponse | None:
        """Keep an answer the origin allows us to share; a Vary answer goes under its variant's key, with a marker."""
        now = self.clock()
        policy = origin_policy(status, CIMultiDictProxy(CIMultiDict(headers)), request.headers, now)
        if not isinstance(policy, OriginPolicy):
            return None
        kept = stored_headers(end_to_end(CIMultiDict(headers)).items())
        if not any(k.lower() == "etag" for k, _ in kept):
            kept.append(("ETag", derived_etag(body)))
        age = float(a) if (a := headers.get("Age", "")).isdigit() else 0.0  # time spent upstream (RFC 9111 4.2.3)
        common = dict(stored_at=now - age, ttl=policy.ttl + age, stale_while_revalidate=policy.stale_while_revalidate,
                      stale_if_error=policy.stale_if_error, tags=[url_tag(request.raw_path)], route=ROUTE,
                      keep=keep_for(headers))
        entry = CachedResponse(status=status, headers=kept, body=body, **common)  # type: ignore[arg-type]
        if policy.vary:
            marker = CachedResponse(status=0, headers=[], body=b"", vary=list(policy.vary), **common)  # type: ignore[arg-type]
            self.tiers.store(key, marker)
            key += variant_suffix(policy.vary, request.headers)
        return entry if self.tiers.store(key, entry) else None

    def _done(self, resp: web.StreamResponse, outcome: str, started: float) -> web.StreamResponse:
        self.metrics.request(ROUTE, outcome, time.perf_counter() - started)
        return resp
