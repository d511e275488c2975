"""Dispatch: the one handler of the proxy listener, and the one exit every answer leaves through.

    request -> Inbound -> rules.match -> key -> caching driver (ruled lane | origin lane) -> answer
                               | no rule, not cacheable, private, upgrade -> pass-through (streamed)
                               | a client's own call to a batch endpoint  -> batch merge
Every exit records metrics and the access log in `_done`; upstream failures become 502/504 JSON in `_error`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import msgspec
from aiohttp import web

from proxy.cache.invalidation import invalidate
from proxy.cache.tiers import TieredCache
from proxy.config.rules import CompiledRule, RuleSet
from proxy.errors import UpstreamError
from proxy.policy.cache_status import CacheStatus
from proxy.policy.freshness import private_request_reason
from proxy.policy.invalidation import invalidated_targets, invalidates, origin_of
from proxy.policy.keys import cache_key, keyed_query, origin_key, raw_params
from proxy.serving import passthrough
from proxy.serving.answer import StoredAnswer
from proxy.serving.batch_merge import BatchMerge
from proxy.serving.batch_route import batch_routes
from proxy.serving.caching import Caching, Lane, error_status
from proxy.serving.fill import Fill, Filler, fill_headers
from proxy.serving.headers import NOBODY, VIA, Forwarding
from proxy.serving.inbound import Inbound
from proxy.serving.origin_cache import OriginLane
from proxy.serving.parking import LED, RESEND, Parked, Parking
from proxy.serving.passthrough import BODY_BYTES
from proxy.serving.replay import Basis, Replays
from proxy.serving.ruled import RuledLane
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.access_log import AccessLog
from proxy.telemetry.log_throttle import LogThrottle
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("sidecache")

_MAX_MERGE_BODY: Final = 1024 * 1024  # a client's batch body read whole to merge it; larger ones stream through


class Unruled(enum.Enum):
    """A remembered target that no rule matches: the origin lane's, keyed by its target and Host."""

    UNRULED = "unruled"


UNRULED: Final = Unruled.UNRULED
MAX_TARGETS: Final = 8192  # request targets remembered with their rule and key (the hit path's shortcut)
_MEMO_OVERHEAD: Final = 400  # bytes a remembered target costs besides its strings (dict slot, tuple, str headers)


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
        unruled: str = "origin",
        max_entry_bytes: int = 1024 * 1024,
        trust: Forwarding = NOBODY,
        targets: Sequence[str] = (),
    ) -> None:
        self.tiers = tiers
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.trust = trust
        if upstream.metrics is None:
            upstream.metrics = metrics
        self.filler = Filler(tiers, upstream, metrics, clock, trust)
        self.caching = Caching(tiers, self.filler, metrics, clock)
        self.coalescer = self.caching.coalescer
        self.ruled = RuledLane(self.caching, self._done, self._pass, self._degraded, targets=targets)
        self.origin = (OriginLane(self.caching, self._done, self._pass, self._degraded,
                                  max_entry_bytes=max_entry_bytes, trust=trust, targets=targets)
                       if unruled == "origin" else None)
        self.access_log: AccessLog | None = None  # None (off) costs one test per request
        self.log_throttle = LogThrottle(log)  # one WARNING per route and kind of failure per interval
        self._tasks: set[asyncio.Task[int]] = set()
        self._targets: dict[str, tuple[CompiledRule, dict[str, str], str, int] | Unruled] = {}
        self._target_bytes = 0
        # the fast lane's kept answers (serving/replay.py), a thirty-second of the memory budget at most
        self.replays = Replays(tiers.memory.reserve, tiers.memory.max_bytes // 32)
        self.parking = Parking()  # the fast lane's announced targets (serving/parking.py)
        # The listener has connections that have sent nothing yet (app.py sets it): a batch lingers for them.
        self.arriving: Callable[[], bool] = lambda: False
        self.use_rules(rules)

    def use_rules(self, rules: RuleSet) -> None:
        """Swap in (reloaded) rules with the batching they declare; no await between the assignments, so each
        request sees the old generation or the new one. Old batchers finish the windows they have open."""
        batches = batch_routes(rules, self.upstream, self.metrics, lambda: self.arriving())  # rule -> [route.batch]
        merges = (BatchMerge(b, self.tiers, self.clock, self.filler) for b in batches.values())
        # A client's own call to a batch endpoint (no rule matches it): cached items answered here (batch_merge.py).
        incoming = {m.target: m for m in reversed(list(merges)) if m.mergeable}
        self.rules, self.batches, self.incoming = rules, batches, incoming
        self.filler.batches = batches
        self._forget()  # remembered targets and kept answers carry the old rules
        self.replays.clear()

    async def close(self, grace: float = 1.0) -> None:
        """At shutdown: give fills in flight a moment to finish and store, then cancel what is left."""
        await self.coalescer.close(grace)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for b in self.batches.values():
            await b.aclose()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        inb = Inbound(request, time.perf_counter())
        lane = self._dispatch(inb)
        self.parking.dispatched(inb.raw_path)  # requests parked on its announcement ask again (serving/parking.py)
        if isinstance(lane, str):
            return await self._pass(inb, request, lane)
        if (resend := request.get(RESEND)) is not None:  # a parked follower the fill's answer was not for
            return await self._pass(inb, request, resend)
        if (led := request.get(LED)) is not None and inb.rule is not None:  # the fast lane's fill, too large to keep
            return await self.ruled.stream(inb, request, led, None, time.perf_counter() - inb.started)
        if isinstance(lane, BatchMerge):
            return await self._merge(inb, request, lane)
        try:
            return await self.caching.serve(inb, request, lane)
        except UpstreamError as exc:
            if inb.rule is None:  # the origin lane streams through `passthrough`, which counts nothing itself
                self.metrics.upstream_error(inb.route, type(exc).__name__)
            return self._error(inb, exc)

    def knows(self, target: str) -> bool:
        """The fast lane's first question: a target seen before (anything else is a miss, or not cached)."""
        return target in self._targets

    def fast(self, inb: Inbound) -> tuple[StoredAnswer, Basis] | Parked | None:
        """The fast lane's question (serving/fast_lane.py) for a GET or HEAD: a fresh memory hit for a target seen
        before, answered and counted as the slow path would, with what it was decided from (a replay's basis); for a
        ruled request that memory holds nothing for, the fill in flight it would only wait for, or, when none is, its
        own fill, started as the slow path starts it (the lane parks it on either: serving/parking.py); None for
        anything else, which goes to aiohttp."""
        lane: Lane
        if self._remembered(inb):
            lane = self.ruled
        elif self.origin is not None and self._targets.get(inb.raw_path) is UNRULED:
            inb.key = origin_key(inb.raw_path, inb.host or "")  # as `_dispatch` keys it
            lane = self.origin
        elif inb.raw_path not in self._targets and self._dispatch(inb) is self.ruled:
            lane = self.ruled  # a target not seen yet, matched and keyed as aiohttp's dispatch would
        else:
            return None
        found = self.caching.fresh(inb, lane)
        if found is None:
            if lane is not self.ruled:
                return None
            if (task := self.caching.joinable(inb, lane)) is not None:
                return Parked(task, inb)
            if not (inb.forced or lane.revalidate(inb)) and self.tiers.local(inb.key) is None:
                return Parked(self.ruled.lead(inb), inb, leads=True)
            return None
        resp, held, until = found
        assert isinstance(resp, StoredAnswer)  # a hit is always written in one piece
        second = 0 if held[-1][1].date else int(time.time())  # the Date is ours: it changes with the second
        return resp, Basis(held, until, self.tiers.degraded, second, inb.method, inb.raw_path, inb.route,
                           resp.cache_status, resp.status, body_bytes(inb.method, resp))

    def follow(self, inb: Inbound, fill: asyncio.Future[Fill]) -> StoredAnswer | str | None:
        """A request the fast lane parked on a fill (`fast`), answered as a collapsed follower of the slow path is,
        and counted: the stored copy, or the shared upstream failure. A str when it must go upstream on its own
        (the answer was personal, or `Vary: *`): aiohttp then passes it through with that detail, as the slow path
        resends its followers (`RESEND`). None: aiohttp serves it from the start (the answer was another Vary
        variant's, or the fill was cut short)."""
        got = self._filled(inb, fill)
        if not isinstance(got, tuple):
            return got
        done, upstream_s = got
        if done.looked_up:
            return None  # Redis held it: the slow path answers it from memory, as it answers any entry
        if not done.serves(inb.headers) and done.vary:
            return None  # another Vary variant's answer: the slow path fetches this one's, once per variant
        answer = self.ruled.follow(inb, done, None, upstream_s)
        return answer if isinstance(answer, (StoredAnswer, str)) else None

    def led(self, inb: Inbound, fill: asyncio.Future[Fill]) -> StoredAnswer | Fill | str | None:
        """A request the fast lane led (`fast`), once its fill is done, answered as the slow path answers its leader,
        and counted: the upstream's answer, or the 502/503/504 JSON; as a follower (`follow`) when another process
        fetched it. A Fill: too large to keep, for aiohttp to stream to it (`LED`). None: aiohttp serves it from
        the start (the fill was cut short, or Redis held the entry)."""
        got = self._filled(inb, fill)
        if not isinstance(got, tuple):
            return got
        done, upstream_s = got
        if done.collapsed:  # another process's copy (Redis held it, or its lease holder fetched it): a follower's
            return self.follow(inb, fill)
        resp = self.ruled.leader(inb, done, None, upstream_s)
        if resp is None:
            return done
        assert isinstance(resp, StoredAnswer)  # without a stale copy, a leader's answer is written in one piece
        return resp

    def _filled(self, inb: Inbound, fill: asyncio.Future[Fill]) -> tuple[Fill, float] | StoredAnswer | None:
        """A done fill as a parked request sees it: the Fill and the time since the request began; the shared
        502/503/504 JSON when it failed upstream; None when it was cut short (aiohttp serves the request)."""
        if fill.cancelled():
            return None
        if (exc := fill.exception()) is not None:
            return self._error(inb, exc) if isinstance(exc, UpstreamError) else None
        return fill.result(), time.perf_counter() - inb.started

    def replayed(self, basis: Basis, started: float) -> bool:
        """Whether a kept fast-lane answer (serving/replay.py) is still the answer: the same entries in memory,
        before Age, ttl or freshness change, Redis as it was. If so it is counted as its first answer was."""
        if self.clock() >= basis.until or self.tiers.degraded is not basis.degraded:
            return False
        if basis.second and int(time.time()) != basis.second:
            return False
        if not self.tiers.still_holds(basis.held):
            return False
        self._record(basis.method, basis.raw_path, basis.route, basis.cache_status, "hit", basis.status,
                     basis.size, time.perf_counter() - started, None)
        return True

    def _remembered(self, inb: Inbound) -> bool:
        """A target seen before, shared: rule, params and key set with no path decoding, query parsing or matching."""
        known = self._targets.get(inb.raw_path)
        if known is None or known is UNRULED:
            return False
        rule, params, key, pattern = known
        if private_request_reason(inb.headers, rule) is not None:
            return False
        inb.use(rule, params, pattern, key)
        return True

    def _dispatch(self, inb: Inbound) -> Lane | BatchMerge | str:
        """Which way a request goes: a caching lane (its rule and key set on `inb`), a client's batch call to merge,
        or the detail of a pass-through."""
        method = inb.method
        if method in ("GET", "HEAD") and self._remembered(inb):
            return self.ruled
        found = self.rules.match_pattern(method, inb.path)
        if found is None:
            if (merge := self.incoming.get((method, inb.path))) is not None:
                return merge
            if self.origin is not None and method in ("GET", "HEAD") and "Upgrade" not in inb.headers:
                inb.key = origin_key(inb.raw_path, inb.host or "")
                if all((m, inb.path) not in self.incoming and self.rules.match_pattern(m, inb.path) is None
                       for m in ("GET", "HEAD")):
                    self._remember(inb, UNRULED)  # no rule matches it: the fast lane may look it up by its key
                return self.origin
            return "no-rule"
        inb.use(*found)
        rule = found[0]
        if not rule.cacheable or method not in ("GET", "HEAD"):
            return "rule-pass"
        if (private := private_request_reason(inb.headers, rule)) is not None:
            return private
        query = inb.query
        # the backend's own "refresh" switch: never part of the key; when on, fetch and refresh the entry
        inb.forced = any(value in query.getall(f.name, ()) for f, value in rule.refresh_when)
        inb.key = cache_key(rule, raw_params(rule, inb.pattern, inb.raw_path), keyed_query(rule, query),
                            inb.headers, pattern=inb.pattern)
        if not rule.keyed_on_headers and not inb.forced:
            self._remember(inb)
        return self.ruled

    def _remember(self, inb: Inbound, unruled: Unruled | None = None) -> None:
        """The hit path's shortcut for a target seen before (its rule, params and key, or UNRULED: no rule matches
        it); its bytes count against the memory tier's budget."""
        if inb.raw_path in self._targets:
            return  # remembered already (an unruled target is dispatched again on aiohttp's path): counted once
        if len(self._targets) >= MAX_TARGETS or self._target_bytes > self.tiers.memory.max_bytes // 8:
            self._forget()  # bounded; refilled by the targets that keep coming
        size = _MEMO_OVERHEAD + 2 * len(inb.raw_path)
        if unruled is not None:
            self._targets[inb.raw_path] = unruled
        else:
            assert inb.rule is not None
            size += len(inb.key) + sum(len(k) + len(v) for k, v in inb.params.items())
            self._targets[inb.raw_path] = (inb.rule, inb.params, inb.key, inb.pattern)
        self._target_bytes += size
        self.tiers.memory.reserve(size)

    def _forget(self) -> None:
        self._targets.clear()
        self.tiers.memory.reserve(-self._target_bytes)
        self._target_bytes = 0

    async def _merge(self, inb: Inbound, request: web.BaseRequest, merge: BatchMerge) -> web.StreamResponse:
        """A client's own batch call: cached items from the tiers, the others upstream, one reply."""
        inb.use(merge.rule, {})
        if request.content_length is None or request.content_length > _MAX_MERGE_BODY:
            return await self._pass(inb, request, "batch-unmergeable")  # streamed as it is
        headers = fill_headers(inb, self.trust, send_host=False)
        try:  # batch_merge counts its own upstream calls and errors
            got = await merge.answer(await request.read(), inb.headers, headers, inb.raw_path)
        except UpstreamError as exc:
            return self._error(inb, exc)
        text = self._degraded(got.cache_status)
        got.headers["Cache-Status"] = text
        got.headers.add("Via", VIA)
        return self._done(inb, web.Response(status=got.status, headers=got.headers, body=got.body), text,
                          got.outcome, None)

    def _degraded(self, status: CacheStatus) -> str:
        """RFC 9211 has one `detail`: while Redis is down its token joins any other with a `+`."""
        if self.tiers.redis is None or not self.tiers.degraded:
            return str(status)
        return str(status.with_detail("redis-unavailable"))

    def _done(self, inb: Inbound, resp: web.StreamResponse, cache_status: CacheStatus | str, outcome: str,
              upstream_s: float | None) -> web.StreamResponse:
        """Every answer leaves through here: the request counted, and logged when the access log is on."""
        self._record(inb.method, inb.raw_path, inb.route, str(cache_status), outcome, resp.status,
                     body_bytes(inb.method, resp), time.perf_counter() - inb.started, upstream_s)
        return resp

    def _record(self, method: str, raw_path: str, route: str, cache_status: str, outcome: str, status: int,
                size: int, took: float, upstream_s: float | None) -> None:
        self.metrics.request(route, outcome, took)
        if self.access_log is not None:
            self.access_log.write(method, raw_path, route, cache_status, status, size, took, upstream_s)

    async def _pass(self, inb: Inbound, request: web.BaseRequest, detail: str) -> web.StreamResponse:
        status = CacheStatus(fwd="bypass", detail=(detail,))
        try:
            resp, _ = await passthrough.forward(request, self.upstream, str(status), trust=self.trust)
        except UpstreamError as exc:
            self.metrics.upstream_error(inb.route, type(exc).__name__)
            return self._error(inb, exc)
        took = time.perf_counter() - inb.started
        self.metrics.upstream_call(inb.route, resp.status, took)  # streamed: the whole exchange was the upstream's
        if invalidates(inb.method, resp.status):
            await asyncio.shield(self._invalidate(inb, resp.headers))
        return self._done(inb, resp, status, "bypass", took)

    def _invalidate(self, inb: Inbound, response: Mapping[str, str]) -> asyncio.Task[int]:
        """After a successful unsafe request, stored answers for its URI, and for its answer's same-origin Location
        and Content-Location, are gone (RFC 9111 4.4). Its own task: a client that leaves right after its answer
        must not cut the purge short in another tier or process."""
        base = self.upstream.base
        origins = {origin_of(str(base)): base.raw_path.rstrip("/"), origin_of(f"{inb.scheme}://{inb.host}"): ""}
        origins.pop("", None)
        targets = invalidated_targets(inb.raw_path, response, origins)
        task = asyncio.ensure_future(invalidate(self.tiers, self.rules, targets))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _error(self, inb: Inbound, exc: UpstreamError) -> StoredAnswer:
        status = error_status(exc)
        kind, message = _ERRORS[status]  # the kind only: the backend's address and aiohttp's words go to the log
        self.log_throttle.warning((inb.route, kind), "route %s: %s", inb.route, exc)
        if status == 503:
            self.metrics.pool_timeout(inb.route)
        body = msgspec.json.encode({"error": kind, "message": message, "status": status})
        cs = str(CacheStatus(fwd="miss", detail=(kind.replace("_", "-"),)))
        headers = [("Content-Type", "application/json"), ("Cache-Status", cs), ("Via", VIA),
                   *_RETRY_AFTER.get(status, ())]
        resp = StoredAnswer(status, headers, body, cs)  # in one piece: a parked follower gets it from the fast lane
        self._done(inb, resp, cs, "error", None)
        return resp


_ERRORS: Final = {
    502: ("upstream_unavailable", "the upstream could not be reached or did not give a complete answer"),
    503: ("upstream_busy", "every connection to the upstream is in use; try again shortly"),
    504: ("upstream_timeout", "the upstream did not answer in time"),
}
_RETRY_AFTER: Final = {503: (("Retry-After", "1"),)}


def body_bytes(method: str, resp: web.StreamResponse) -> int:
    """The body bytes a response sent, whichever path answered: none for HEAD, 1xx, 204 and 304 (RFC 9110 6.4.1)."""
    if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
        return 0
    if BODY_BYTES in resp:
        return resp[BODY_BYTES]
    if isinstance(resp, StoredAnswer):
        return resp.size
    return resp.content_length or 0
