"""A client's own call to a batch endpoint, answered item by item from the cache; only missing items go upstream.

A rule with `[route.batch]` makes the proxy recognise its `to` endpoint (unless another rule matches that request:
a `ttl = "0s"` rule there turns this off). Each item of the client's body is read back into the request the single
endpoint would get (the inverse of `item`), keyed as that request, answered from the tiers when fresh, and the
others are sent upstream in batches of at most `max_items`, stored per item, and merged into one reply of the
backend's shape. The `performance` and `optimization` blocks are the proxy's own for what it answered:
`cache_hit_rate` is the share of this batch answered from the proxy's cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from proxy.cache.tiers import TieredCache
from proxy.policy.cache_status import CacheStatus
from proxy.policy.freshness import State, private_request_reason, state, unstorable_reason
from proxy.policy.keys import cache_key, failure_key, tags_for
from proxy.policy.origin_policy import vary_names
from proxy.serving.batch_route import BatchRoute, Reply
from proxy.serving.batch_spec import Unbatchable
from proxy.serving.fill import Filler, Terms
from proxy.serving.headers import end_to_end

_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"  # what a browser leaves unencoded in a path segment


@dataclass(frozen=True, slots=True)
class Merged:
    """The answer for the client, ready to send."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    cache_status: CacheStatus
    outcome: str


@dataclass(slots=True)
class _Slot:
    """One item of the client's batch and where its answer came from."""

    item: dict[str, Any]
    own: object  # the id the client gets back: its own, or the backend's default for an item without one
    key: str | None  # None: the item cannot be keyed, so it is sent upstream and never stored
    request: tuple[dict[str, str], MultiDict[str], CIMultiDict[str]] | None = None  # params, query, headers
    body: bytes | None = None
    failure: dict[str, Any] | None = None


class BatchMerge:
    """Answers `POST <batch.to>` for one batched rule."""

    def __init__(self, route: BatchRoute, tiers: TieredCache, clock: Callable[[], float],
                 filler: Filler | None = None) -> None:
        self.route, self.rule, self.spec = route, route.rule, route.spec
        self.tiers = tiers
        self.clock = clock
        self.filler = filler  # stores merged items as fills do (None: nothing is stored)
        covered = {(f.ref.source, f.ref.name) for f in self.spec.fields}
        params = {n for rx in self.rule.regexes for n in rx.groupindex}
        keyed = self.rule.key_fields or ()
        # An item can stand for a single request only when it carries every part that the key reads from it.
        self.mergeable = {("path", p) for p in params} <= covered and all(
            (f.source, f.name) in covered for f in keyed if f.source != "header")

    @property
    def target(self) -> tuple[str, str]:
        return self.spec.method, self.spec.path

    async def answer(
        self, body: bytes, headers: CIMultiDictProxy[str], forward: CIMultiDict[str], raw_path: str
    ) -> Merged:
        """The merged reply; a body of another shape, or a private request, is relayed as it is."""
        started = time.perf_counter()
        if (private := private_request_reason(headers, self.rule)) is not None:
            return await self._relay(body, forward, raw_path, private)
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return await self._relay(body, forward, raw_path, "batch-unreadable")
        items = self.spec.items_in(doc)
        if items is None or not all(type(i) is dict for i in items):
            return await self._relay(body, forward, raw_path, "batch-unreadable")
        slots = [self._slot(i, item, headers) for i, item in enumerate(items)]
        keys = [s.key for s in slots if s.key is not None]
        found = await self.tiers.find_many([*keys, *(failure_key(k) for k in keys)], headers)  # one round trip for all
        now, cached = self.clock(), 0
        for s in slots:
            if s.key is None:
                continue
            entry = found.get(s.key)
            # Only what the batch endpoint itself answered for this item: a single request's answer may differ.
            if entry is not None and entry.source == "batch" and entry.status == 200 and \
                    state(entry, now) is State.FRESH and entry.body.lstrip()[:1] == b"{":
                s.body, cached = entry.body, cached + 1
            elif (failed := found.get(failure_key(s.key))) is not None and state(failed, now) is State.FRESH:
                s.failure, cached = msgspec.json.decode(failed.body), cached + 1
        origin = headers.get("Origin", "")
        if all(s.body is not None or s.failure is not None for s in slots) and origin not in self.route.learned:
            # The reply's own headers (CORS for this Origin) are not known yet: the backend answers this once.
            return await self._relay(body, forward, raw_path, "batch-headers-unknown")
        replies = await self._fetch([s for s in slots if s.body is None and s.failure is None], forward)
        for sent, reply in replies:
            if reply.problem is not None:  # what the client would have had without the proxy
                r = reply.response
                status = CacheStatus(fwd="miss", fwd_status=r.status, detail=(f"batch-{reply.problem}",))
                return Merged(r.status, end_to_end(r.headers, drop=("Content-Length",)), r.body, status, "miss")
            self._take(sent, reply, headers)
        return self._merge(doc, slots, replies, cached, started, origin)

    def _slot(self, index: int, item: dict[str, Any], headers: CIMultiDictProxy[str]) -> _Slot:
        m = self.spec.match_on
        raw = item.get(m, f"batch_{index}")  # the backend's default id, given only when the field is absent
        own = None if raw is None else str(raw)
        if not self.mergeable or own is None:
            return _Slot(item, own, None)
        params: dict[str, str] = {}
        query: MultiDict[str] = MultiDict()
        hdrs = CIMultiDict(headers)
        try:
            for f in self.spec.fields:
                if f.name != m and f.name not in item:
                    raise Unbatchable(f"`{f.name}` is absent")
                text = own if f.name == m else f.render(item[f.name])
                if f.ref.source == "path":
                    params[f.ref.name] = text
                elif f.ref.source == "query":
                    query.add(f.ref.name, text)
                else:
                    hdrs[f.ref.name] = text
        except Unbatchable:
            return _Slot(item, own, None)
        raw = {k: quote(v, safe=_PATH_SAFE) for k, v in params.items()}  # as the single request's path carries it
        return _Slot(item, own, cache_key(self.rule, raw, query, hdrs), (params, query, hdrs))

    async def _fetch(
        self, missing: list[_Slot], forward: CIMultiDict[str]
    ) -> list[tuple[dict[str, list[_Slot]], Reply]]:
        """Missing items, one per key, in calls of at most max_items; each item sent under an id unique to its call."""
        unique: dict[str | int, list[_Slot]] = {}
        for i, s in enumerate(missing):
            unique.setdefault(s.key if s.key is not None else i, []).append(s)
        groups = list(unique.values())
        size = self.route.batcher.max_items
        chunks = [groups[i:i + size] for i in range(0, len(groups), size)]

        async def send(chunk: list[list[_Slot]]) -> tuple[dict[str, list[_Slot]], Reply]:
            sent: dict[str, list[_Slot]] = {}
            items = []
            for n, same in enumerate(chunk):
                sid = str(same[0].own)
                if sid in sent or same[0].own is None:
                    sid = f"{same[0].own}~{n}"
                sent[sid] = same
                # What may be stored is fetched with the rule's own item fields and body template, never with a
                # client's extra fields or options; an item that cannot be keyed goes as the client wrote it.
                own = same[0].item if same[0].key is None else {
                    f.name: same[0].item[f.name] for f in self.spec.fields if f.name in same[0].item}
                items.append({**own, self.spec.match_on: sid})
            async with self.route.calls:
                return sent, await self.route.call(items, forward)

        results = await asyncio.gather(*(send(c) for c in chunks), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    def _take(self, sent: dict[str, list[_Slot]], reply: Reply, request: CIMultiDictProxy[str]) -> None:
        """Give each slot its answer or failure, and store each under its item's own key (a failure apart, for
        `negative_ttl`, where only a client's batch reads it)."""
        for sid, same in sent.items():
            if (body := reply.answers.get(sid)) is not None:
                body = self.spec.with_id(body, same[0].own)
                for s in same:
                    s.body = body
                self._store(same[0], 200, body, reply.headers, request)
            elif (failure := reply.failed.get(sid)) is not None:
                for s in same:
                    s.failure = failure
                self._store(same[0], 200, msgspec.json.encode({k: v for k, v in failure.items()
                                                               if k != self.spec.match_on}),
                            reply.headers, request, failed=True)

    def _store(self, slot: _Slot, status: int, body: bytes, headers: CIMultiDictProxy[str],
               request: CIMultiDictProxy[str], *, failed: bool = False) -> None:
        if self.filler is None or slot.key is None or slot.request is None:
            return
        if unstorable_reason(status, headers, body, self.rule) is not None or (vary := vary_names(headers)) is None:
            return
        r = self.rule.route
        params, query, hdrs = slot.request
        terms = Terms(ttl=min(r.ttl, r.negative_ttl) if failed else r.ttl, route=self.rule.name,
                      stale_while_revalidate=0.0 if failed else r.stale_while_revalidate,
                      stale_if_error=0.0 if failed else r.stale_if_error, vary=vary,
                      tags=tuple(tags_for(self.rule, params, query, hdrs)), source="batch", derive_etag=not failed,
                      compress=not failed, echoed=bool(self.rule.echo))
        key = failure_key(slot.key) if failed else slot.key
        self.filler.store(key, request, status, headers.items(), body, terms, since=self.tiers.generation)

    def _merge(
        self, doc: Any, slots: list[_Slot], replies: list[tuple[dict[str, list[_Slot]], Reply]], cached: int,
        started: float, origin: str,
    ) -> Merged:
        m = self.spec.match_on
        successful = [msgspec.Raw(self.spec.with_id(s.body, s.own)) for s in slots if s.body is not None]
        failed: list[Any] = [{**s.failure, m: s.own} for s in slots if s.body is None and s.failure is not None]
        failed += [entry for _, reply in replies for entry in reply.anonymous]
        options = doc if isinstance(doc, dict) else {}
        body = msgspec.json.encode({
            self.spec.results: successful,
            self.spec.failures: failed,
            "performance": {
                "total_processed": len(slots), "processing_time": time.perf_counter() - started,
                "cache_hit_rate": cached / len(slots) if slots else 0.0,
                "successful_count": len(successful), "failed_count": len(failed),
            },
            "optimization": {
                "batch_size": len(slots), "cache_enabled": options.get("use_cache", True),
                "cache_warming": options.get("warm_cache", True),
            },
        })
        fetched = sum(len(sent) for sent, _ in replies)
        # The headers the backend gives this client's Origin on this endpoint: this call's, or the last ones learned.
        headers = CIMultiDict(replies[0][1].headers if replies else self.route.learned.get(origin, {}))
        headers.setdefault("Content-Type", "application/json")
        if not replies:
            return Merged(200, headers, body, CacheStatus(hit=True, detail=("batch-merged",),
                                                          extra=(("cached", str(cached)),)), "hit")
        status = CacheStatus(fwd="miss", fwd_status=200, detail=("batch-merged",),
                             extra=(("cached", str(cached)), ("fetched", str(fetched))))
        return Merged(200, headers, body, status, "batched")

    async def _relay(self, body: bytes, forward: CIMultiDict[str], raw_path: str, detail: str) -> Merged:
        """The request as the client sent it, the backend's answer as it came."""
        resp = await self.route.upstream.call(self.rule.name, self.spec.method, raw_path, forward, body)
        if resp.status == 200:
            self.route.learn(forward.get("Origin", ""), resp.headers)
        headers = end_to_end(resp.headers, drop=("Content-Length",))
        return Merged(resp.status, headers, resp.body, CacheStatus(fwd="bypass", detail=(detail,)), "bypass")
