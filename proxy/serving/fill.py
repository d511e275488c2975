"""Filling a key: one upstream answer (single call, batch, or the origin's 304) fetched and stored for everyone
waiting on that key; it runs as its own task, so no caller can cancel it for the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.tiers import TieredCache
from proxy.config.rules import CompiledRule
from proxy.errors import UpstreamError
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import stored_headers, unstorable_reason
from proxy.policy.keys import tags_for
from proxy.policy.validators import derived_etag, keep_for, revalidation_headers
from proxy.serving.batch_route import BatchRoute
from proxy.serving.headers import add_forwarding, end_to_end
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.metrics import Metrics

# A fill must not carry one client's conditions or ranges: its answer is shared by everyone who waits on it.
FILL_DROP: Final = (
    "Host", "Content-Length", "Accept-Encoding", "If-None-Match", "If-Modified-Since", "If-Match",
    "If-Unmodified-Since", "If-Range", "Range",
)


def shared_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The headers of a request made on behalf of every client waiting on it."""
    return add_forwarding(end_to_end(request.headers, drop=FILL_DROP), client_ip=request.remote,
                          proto=request.scheme, host=request.host)


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
    entry: CachedResponse | None = None  # what was stored, answered from (ETag, client conditions) like a hit
    revalidated: bool = False  # the origin's 304 confirmed the stored answer


class Filler:
    """Fetches and stores for a key; the handler starts it through its coalescer, one task per key."""

    def __init__(self, tiers: TieredCache, upstream: UpstreamClient, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        self.tiers, self.upstream, self.metrics, self.clock = tiers, upstream, metrics, clock
        self.batches: dict[str, BatchRoute] = {}  # rule name -> its [route.batch]; set by the handler's rules

    async def once(self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], key: str,
                         stale: CachedResponse | None) -> Fill:
        """`_fetch` under the key's Redis lease: one process of all that share Redis fetches, the others adopt."""
        return await self.tiers.fill_once(key, lambda: self._fetch(request, rule, params, key, stale), _adopt)

    async def _fetch(self, request: web.BaseRequest, rule: CompiledRule, params: dict[str, str], key: str,
                    stale: CachedResponse | None = None) -> Fill:
        """Fetch for everyone waiting on key and store what may be stored; runs as its own task."""
        headers = shared_headers(request)
        headers["Accept-Encoding"] = "identity"  # one stored body that every client can read
        batch, batch_size = self.batches.get(rule.name), None
        conditions = revalidation_headers(CIMultiDict(stale.headers)) if stale is not None and batch is None else {}
        headers.update(conditions)  # the origin's own validators only (RFC 9111 4.3.1)
        t0 = time.perf_counter()
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
        if resp.status == 304 and conditions and stale is not None:
            return self._refresh(key, stale, resp.headers)
        out_headers = end_to_end(resp.headers, drop=("Content-Length",))
        reason = unstorable_reason(resp.status, resp.headers, resp.body, rule)
        entry = None
        if reason is None:
            r = rule.route
            kept = stored_headers(out_headers.items())
            if "ETag" not in resp.headers and not rule.echo:  # echo routes get theirs per answer (see _answer)
                kept.append(("ETag", derived_etag(resp.body)))
            negative = resp.status != 200
            entry = CachedResponse(
                status=resp.status, headers=kept, body=resp.body, stored_at=self.clock(),
                ttl=min(r.ttl, r.negative_ttl) if negative else r.ttl,
                stale_while_revalidate=0.0 if negative else r.stale_while_revalidate,
                stale_if_error=r.stale_if_error, tags=tags_for(rule, params, request.query, request.headers),
                route=rule.name, keep=keep_for(resp.headers) if batch is None else 0.0,
            )
            if not self.tiers.store(key, entry):
                entry, reason = None, "too-large"
        if reason is not None:
            self.metrics.not_storable(rule.name, reason)
        return Fill(resp.status, out_headers, resp.body, entry is not None, reason, batch_size, entry=entry)

    def _refresh(self, key: str, stale: CachedResponse, fresh_headers: CIMultiDictProxy[str]) -> Fill:
        """A 304 from the origin: the stored body stands, with the 304's headers and a new lifetime (RFC 9111 4.3.4)."""
        merged = CIMultiDict(stale.headers)
        for k, v in stored_headers(end_to_end(fresh_headers).items()):
            merged[k] = v
        entry = msgspec.structs.replace(stale, headers=list(merged.items()), stored_at=self.clock())
        stored = self.tiers.store(key, entry)
        return Fill(entry.status, merged, entry.body, stored, None, entry=entry if stored else None,
                    revalidated=True)


def _adopt(entry: CachedResponse) -> Fill:
    """Another process's fill, read back from Redis, answers this process's waiters as a collapsed fill."""
    return Fill(entry.status, CIMultiDict(entry.headers), entry.body, True, None, collapsed=True, entry=entry)
