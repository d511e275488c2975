"""Filling a key: one upstream answer (single call, batch, or the origin's 304) fetched and stored for everyone
waiting on that key; it runs as its own task, so no caller can cancel it for the others.

Both caching paths store through `Filler.store`: one entry built one way (policy/stored.py), a Vary answer kept
under its variant's key with a marker under the resource's key, and nothing stored that a purge since the fill
began would have removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.lease import Lease
from proxy.cache.tiers import TieredCache
from proxy.policy.cache_status import PERSONAL
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import cache_control
from proxy.policy.keys import key_tag, variant_key
from proxy.policy.origin_policy import vary_names
from proxy.policy.stored import entry_of, refreshed
from proxy.serving.batch_route import BatchRoute
from proxy.serving.headers import Forwarding, end_to_end, upstream_headers
from proxy.serving.inbound import Inbound
from proxy.serving.upstream import Overflow, UpstreamClient
from proxy.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Terms:
    """How long, and on what terms, an answer may be kept (from a rule, or from the origin's headers)."""

    ttl: float
    route: str
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    vary: tuple[str, ...] = ()  # request headers that pick the variant, lower-case, sorted
    tags: tuple[str, ...] = ()
    keep: float = 0.0
    derive_etag: bool = True
    source: str = ""
    age: float = 0.0  # how old the answer already was when it arrived (RFC 9111 4.2.3)
    compress: bool = True  # keep a gzip copy beside the body
    echoed: bool = False  # answers rewrite the body per caller: their gzip copies are made in serving/echoes.py
    omit: tuple[str, ...] = ()  # fields never stored (`no-cache="field"`, RFC 9111 5.2.2.4)


# Given an upstream answer (status, headers, body): the terms to keep it on, or why it may not be kept.
Judge = Callable[[int, CIMultiDictProxy[str], bytes], "Terms | str"]


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
    overflow: Overflow | None = None  # an answer too large to keep, still open, for the leader alone to stream
    asked: Mapping[str, str] | None = None  # the headers of the request it was fetched for (None: another process's)
    looked_up: bool = False  # no fill ran: Redis held the key's entry (`found`), which memory now holds too

    @property
    def vary(self) -> tuple[str, ...] | None:
        """The request headers that select this answer (lower-case); None for `Vary: *`, which no other request fits."""
        if self.entry is not None:
            return tuple(self.entry.vary)
        return vary_names(self.headers)

    def serves(self, request: Mapping[str, str]) -> bool:
        """Whether a collapsed waiter may take this answer: its Vary selects the same variant for the waiter as for
        the request it was fetched for. Another browser Origin's CORS headers, or a CSV for a JSON client, never do."""
        vary = self.vary
        if vary is None or (self.entry is not None and self.entry.is_marker):  # a marker answers nobody
            return False
        if not vary:
            return True
        return self.asked is not None and variant_key("", vary, request) == variant_key("", vary, self.asked)

    @property
    def personal(self) -> bool:
        """The answer belongs to the client it was fetched for: a waiter never receives it (hit-for-miss)."""
        if self.reason in PERSONAL or "Set-Cookie" in self.headers or self.overflow is not None:
            return True
        cc = cache_control(", ".join(self.headers.getall("Cache-Control", ())))
        return "private" in cc or "no-store" in cc


def fill_headers(inb: Inbound, trust: Forwarding, *, send_host: bool) -> CIMultiDict[str]:
    """The headers of a request made on behalf of every client waiting on a key."""
    headers = upstream_headers(inb.headers, "fill", peer=inb.peer, scheme=inb.scheme, host=inb.host, trust=trust,
                               send_host=send_host)
    headers["Accept-Encoding"] = "identity"  # one stored body that every client can read
    return headers


class Filler:
    """Fetches and stores for a key; the caching driver starts it through its coalescer, one task per key."""

    def __init__(self, tiers: TieredCache, upstream: UpstreamClient, metrics: Metrics,
                 clock: Callable[[], float], trust: Forwarding) -> None:
        self.tiers, self.upstream, self.metrics, self.clock, self.trust = tiers, upstream, metrics, clock, trust
        self.batches: dict[str, BatchRoute] = {}  # rule name -> its [route.batch]; set by the handler's rules

    async def once(self, inb: Inbound, key: str, judge: Judge, *, stale: CachedResponse | None,
                   conditions: dict[str, str], send_host: bool, forced: bool = False) -> Fill:
        """`fetch` under the key's Redis lease: one process of all that share Redis fetches, the others adopt.
        A forced fill (the client asked past the cache) never adopts another process's copy."""
        since = self.tiers.generation
        inb.detach()  # the fill runs as its own task, which may outlive the client's connection

        async def fetch(lease: Lease | None = None) -> Fill:
            return await self.fetch(inb, key, judge, stale=stale, conditions=conditions, send_host=send_host,
                                    since=since, lease=lease)

        if forced:
            return await fetch()
        return await self.tiers.fill_once(key, fetch, _adopt)

    async def fetch(self, inb: Inbound, key: str, judge: Judge, *, stale: CachedResponse | None,
                    conditions: dict[str, str], send_host: bool, since: int, lease: Lease | None = None) -> Fill:
        """Fetch for everyone waiting on key and store what may be stored (releasing `lease`); runs as its own task."""
        headers = fill_headers(inb, self.trust, send_host=send_host)
        batch = self.batches.get(inb.route) if inb.rule is not None and not conditions else None
        batch_size = None
        headers.update(conditions)  # the origin's own validators only (RFC 9111 4.3.1)
        if batch is None:
            got = await self.upstream.call_upto(inb.route, "GET", inb.raw_path, headers,
                                                self.tiers.memory.max_entry_bytes)
            if isinstance(got, Overflow):  # too large to keep: its one client streams it, waiters ask their own
                self.metrics.not_storable(inb.route, "too-large")
                return Fill(got.status, end_to_end(got.headers, drop=("Content-Length",)), b"", False, "too-large",
                            overflow=got, asked=inb.headers)
            resp = got
        else:  # counts its own upstream calls: one batch call answers many fills
            resp, batch_size = await batch.fetch(key, inb.params, inb.query, inb.raw_path, headers)
        if resp.status == 304 and conditions and stale is not None:
            return self.revalidated(key, inb, stale, resp.headers, since, lease)
        out_headers = end_to_end(resp.headers, drop=("Content-Length",))
        verdict = judge(resp.status, resp.headers, resp.body)
        entry, reason = None, verdict if isinstance(verdict, str) else None
        if isinstance(verdict, Terms):
            if batch_size:
                verdict = replace(verdict, source="batch", keep=0.0)
            entry = self.store(key, inb.headers, resp.status, out_headers.items(), resp.body, verdict, since=since,
                               lease=lease)
            if entry is None:
                reason = "too-large"
        if reason is not None:
            self.metrics.not_storable(inb.route, reason)
        return Fill(resp.status, out_headers, resp.body, entry is not None, reason, batch_size, entry=entry,
                    asked=inb.headers)

    def revalidated(self, key: str, inb: Inbound, stale: CachedResponse, not_modified: CIMultiDictProxy[str],
                    since: int, lease: Lease | None = None) -> Fill:
        """A 304 from the origin: the stored body stands, with the 304's headers and a new lifetime (RFC 9111 4.3.4)."""
        entry = refreshed(stale, end_to_end(not_modified).items(), now=self.clock())
        vkey = variant_key(key, stale.vary, inb.headers) if stale.vary else key
        stored = self.tiers.store(vkey, entry, since=since, lease=lease)
        return Fill(entry.status, CIMultiDict(entry.headers), entry.body, stored, None,
                    entry=entry if stored else None, revalidated=True, asked=inb.headers)

    def store(self, key: str, request: CIMultiDictProxy[str], status: int, headers: Iterable[tuple[str, str]],
              body: bytes, terms: Terms, *, since: int, lease: Lease | None = None) -> CachedResponse | None:
        """Keep an answer; a Vary answer goes under its variant's key, with a marker under the resource's key."""
        now = self.clock() - terms.age
        tags = [*terms.tags, key_tag(key)] if terms.vary else list(terms.tags)  # variants: reached by their key's tag
        entry = entry_of(status, headers, body, stored_at=now, ttl=terms.ttl + terms.age, route=terms.route,
                         stale_while_revalidate=terms.stale_while_revalidate, stale_if_error=terms.stale_if_error,
                         tags=tags, keep=terms.keep, derive_etag=terms.derive_etag, source=terms.source,
                         vary=list(terms.vary), omit=terms.omit, compress=terms.compress,
                         echoed=terms.echoed)
        if terms.vary:
            marker = CachedResponse(status=0, headers=[], body=b"", stored_at=now, ttl=terms.ttl + terms.age,
                                    stale_while_revalidate=terms.stale_while_revalidate,
                                    stale_if_error=terms.stale_if_error, tags=tags, route=terms.route,
                                    vary=list(terms.vary), keep=terms.keep)
            if not self.tiers.store(key, marker, since=since, lease=lease):
                return None
            key = variant_key(key, terms.vary, request)
        return entry if self.tiers.store(key, entry, since=since, lease=lease) else None


def found(entry: CachedResponse) -> Fill:
    """What a lookup before a fill (`RuledLane.lead`) found in Redis: the fast lane's parked requests are served
    from the start by the slow path, which decides on it as on any entry; a slow-path waiter takes the stored copy."""
    return replace(_adopt(entry), looked_up=True)


def _adopt(entry: CachedResponse) -> Fill:
    """Another process's fill, read back from Redis, answers this process's waiters as a collapsed fill."""
    return Fill(entry.status, CIMultiDict(entry.headers), entry.body, True, None, collapsed=True, entry=entry)
