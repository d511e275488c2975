"""A rule's `[route.batch]` over HTTP: single misses become items of one batch call, its results their own bodies.

The driver: windows (concurrency/batcher.py), the breaker and its probes, fallbacks to the single endpoint. The
wire format (items, the body, splitting the reply) is serving/batch_spec.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from proxy.concurrency.batcher import Batcher
from proxy.concurrency.breaker import Breaker
from proxy.concurrency.eager import eager_task
from proxy.config.rules import CompiledRule, RuleSet
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.policy.freshness import unstorable_reason
from proxy.serving.batch_spec import BatchSpec, Unbatchable
from proxy.serving.headers import end_to_end
from proxy.serving.upstream import UpstreamClient, UpstreamResponse
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("sidecache")
V = TypeVar("V")
_GROUP_SEP: Final = "\x1f"
_LEARNED: Final = 256  # Origins whose batch reply headers are remembered
# Headers that describe the batch reply as a whole, never one item's body cut out of it.
_REPLY_ONLY: Final = ("Content-Length", "Content-Encoding", "Content-MD5", "ETag", "Last-Modified", "Set-Cookie")
# Headers of a client's request that belonged to its own body, not to the batch body built here.
_BODY_ONLY: Final = ("Content-Length", "Content-Type", "Content-Encoding", "Transfer-Encoding")


@dataclass(frozen=True, slots=True)
class Reply:
    """A batch call's answer, split by the id each item was sent with."""

    response: UpstreamResponse
    problem: str | None  # why the call as a whole gave nothing usable: "status-500", "unparseable"
    answers: dict[str, bytes]  # sent id -> that item's own JSON object, as the backend wrote it
    failed: dict[str, dict[str, Any]]  # sent id -> its entry in the reply's failures
    anonymous: list[Any]  # failure entries without an id (a whole group failed, or the batch)
    headers: CIMultiDictProxy[str]  # the reply's headers that suit each item's own body


@dataclass(frozen=True, slots=True)
class Pending:
    """One item waiting in a window, with the target and forwarding headers of the request that asked for it."""

    item: dict[str, Any]
    headers: CIMultiDict[str]
    raw_path: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """An item's own body cut out of a batch reply; `sent` is the id it carries."""

    body: bytes
    headers: CIMultiDictProxy[str]
    sent: object


@dataclass(frozen=True, slots=True)
class Miss:
    """Why the batch gave an item nothing ("failed", "missing", the whole call's failure), or "alone": a lone item
    that went to the single endpoint instead; `single` is that call, started as soon as the batch reply was read."""

    reason: str
    single: asyncio.Task[UpstreamResponse] | None = None


class BatchRoute:
    """One batched rule: a Batcher per rule, the batch call, and single calls for whatever a batch leaves out.

    A breaker watches whether batching pays: a batch call that fails whole, or whose failed items then succeed
    alone more often than it answered items itself, counts against it. After `trip_after` of those in a row the
    route stops batching for `cool_down` (its requests go to the single endpoint as if there were no batching),
    then one request's item is also sent as a batch of one beside its own single call: a probe that costs one
    call and no client any time. A probe that answers closes the breaker; one that does not doubles the cool-down,
    up to `max_cool_down`.
    """

    def __init__(
        self, rule: CompiledRule, upstream: UpstreamClient, metrics: Metrics, *,
        calls: asyncio.Semaphore, fallbacks: asyncio.Semaphore, clock: Callable[[], float] = time.monotonic,
        arriving: Callable[[], bool] | None = None,
    ) -> None:
        self.rule = rule
        self.spec = BatchSpec(rule)
        self.upstream = upstream
        self.metrics = metrics
        self.calls = calls
        self._fallbacks = fallbacks
        b = rule.route.batch
        assert b is not None  # BatchSpec raised otherwise
        self.fallback = b.on_item_error == "fallback"
        self.alone = b.linger > 0  # adaptive: a batch of one goes to the single endpoint
        # The reply headers the batch endpoint gave each Origin (CORS): a client's batch answered wholly from the
        # cache carries exactly these, never invented ones (batch_merge.py).
        self.learned: OrderedDict[str, CIMultiDictProxy[str]] = OrderedDict()
        self.batcher: Batcher[str, str, Pending, Answer | Miss] = Batcher(
            self._send, window=float(b.window), max_items=b.max_items, calls=(asyncio.Semaphore(b.max_calls), calls),
            idle=float(b.idle), linger=float(b.linger), cut_calls=max(1, b.max_calls // 2), arriving=arriving,
        )
        self.breaker: Breaker | None = None
        if b.trip_after:
            self.breaker = Breaker(failures=b.trip_after, probe_min=float(b.cool_down),
                                   probe_max=float(b.max_cool_down), clock=clock, on_change=self._changed)
        self._probing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # single calls and verdicts started by batch calls

    @property
    def batching(self) -> bool:
        """False while the breaker is open: requests go to the single endpoint."""
        return self.breaker is None or self.breaker.closed

    async def fetch(
        self, key: str, params: Mapping[str, str], query: MultiMapping[str], raw_path: str, headers: CIMultiDict[str]
    ) -> tuple[UpstreamResponse, int]:
        """What the single endpoint answers for one request, via a batch when it can: (answer, batch size), where
        the size is 0 for an item that went to the single endpoint instead (alone, fallen back, breaker open)."""
        if not self.batching and not self._probe_due():  # no item is built for a batch that will not be sent
            return await self.single(raw_path, headers, "breaker-open", bounded=False), 0
        try:
            item = self.spec.item(params, query, headers)
        except Unbatchable:
            return await self.single(raw_path, headers, "unbatchable"), 0
        if not self.batching:
            return await self._unbatched(item, raw_path, headers), 0
        # One batch call answers with one set of headers: requests from different origins (CORS) never share one.
        group = f"{self.spec.group_of(params, query, headers)}{_GROUP_SEP}{headers.get('Origin', '')}"
        got = await self.batcher.submit(group, key, Pending(item, headers, raw_path))
        if got.shared:
            self.metrics.batch_deduplicated[self.rule.name] += 1
        outcome = got.result
        if isinstance(outcome, Answer):
            own = item[self.spec.match_on]
            body = outcome.body if outcome.sent == own else self.spec.with_id(outcome.body, own)
            return UpstreamResponse(200, outcome.headers, body), got.size
        if outcome.single is None:
            raise UpstreamError(f"rule {self.rule.name!r}: batch item {outcome.reason}", url=self.spec.path)
        return await asyncio.shield(outcome.single), 0  # shared by identical items; never cancelled for the others

    async def single(self, raw_path: str, headers: CIMultiDict[str], reason: str, *,
                     bounded: bool = True) -> UpstreamResponse:
        """The item as its own call to the single endpoint; a fallback (`bounded`) waits for one of the
        `max_fallback_calls` slots, a request that was never in a batch (alone, breaker open) does not."""
        self.metrics.batch_fallbacks[(self.rule.name, reason)] += 1
        if not bounded:
            return await self.upstream.call(self.rule.name, "GET", raw_path, headers)
        async with self._fallbacks:
            return await self.upstream.call(self.rule.name, "GET", raw_path, headers)

    async def aclose(self) -> None:
        """Cancel open windows, batch calls, and the single calls and probes they started."""
        await self.batcher.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _unbatched(self, item: dict[str, Any], raw_path: str, headers: CIMultiDict[str]) -> UpstreamResponse:
        """Breaker open: the request's own call; when a probe is due, its item also goes as a batch of one."""
        assert self.breaker is not None
        if self._probe_due():
            self._probing = True
            self._spawn(self._probe(item, headers))
        return await self.single(raw_path, headers, "breaker-open", bounded=False)

    def _probe_due(self) -> bool:
        """The breaker is open and its cool-down is over: the next request's item also goes as a probe."""
        return self.breaker is not None and not self._probing and self.breaker.probe_in() <= 0

    async def _probe(self, item: dict[str, Any], headers: CIMultiDict[str]) -> None:
        """Does the batch endpoint answer again? Its verdict alone decides while the breaker is open."""
        assert self.breaker is not None
        self.metrics.batch_probes[self.rule.name] += 1
        try:
            try:
                reply = await self.call([item], headers)
            except UpstreamError:
                self.breaker.failed()
                return
            if reply.problem is None and str(item[self.spec.match_on]) in reply.answers:
                self.breaker.succeeded()
            else:
                self.breaker.failed()  # it failed the item, and either the item answers alone or nothing proved it
        finally:
            self._probing = False

    def _spawn(self, coro: Coroutine[Any, Any, V]) -> asyncio.Task[V]:
        """A task of this route's own, started eagerly (its upstream request is written before this returns),
        cancelled by aclose(); its exception is retrieved even if nobody awaits it."""
        task = eager_task(coro)
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))
        return task

    def _changed(self, closed: bool) -> None:
        log.warning("rule %r: batching %s", self.rule.name,
                    "resumed: a probe batch answered" if closed else
                    "stopped: batch calls keep failing items that succeed alone; requests go to the single endpoint")

    def _judge(self, answered: int, singles: list[asyncio.Task[UpstreamResponse]]) -> None:
        """The breaker's verdict on one batch call, once its failed items have been tried alone."""
        if self.breaker is None:
            return
        if not singles:
            self._verdict(bad=False, good=answered > 0)
            return

        async def verdict() -> None:
            results = await asyncio.gather(*singles, return_exceptions=True)
            rescued = sum(isinstance(r, UpstreamResponse) and self._good(r) for r in results)
            self._verdict(bad=rescued > answered, good=answered > 0)

        self._spawn(verdict())

    def _verdict(self, *, bad: bool, good: bool) -> None:
        if self.breaker is None or not self.breaker.closed:
            return  # calls already in flight when it opened are no news; only its probe decides now
        if bad:
            self.breaker.failed()
        elif good:
            self.breaker.succeeded()

    def _good(self, resp: UpstreamResponse) -> bool:
        """An answer the single endpoint gave that the batch could have given too: a storable success."""
        return 200 <= resp.status < 300 and unstorable_reason(resp.status, resp.headers, resp.body, self.rule) is None

    async def call(self, items: list[dict[str, Any]], headers: CIMultiDict[str], base: Any = None) -> Reply:
        """One batch call with items whose ids are unique; transport failures raise UpstreamError."""
        out = end_to_end(headers, drop=_BODY_ONLY)
        out["Content-Type"] = "application/json"
        out["Accept-Encoding"] = "identity"  # the reply is parsed here
        self.metrics.batch_sent(self.rule.name, len(items))
        body = self.spec.body(items, base)
        resp = await self.upstream.call(self.rule.name, self.spec.method, self.spec.path, out, body,
                                        retry_safe=True)  # a read, whatever its method
        kept = CIMultiDictProxy(end_to_end(resp.headers, drop=_REPLY_ONLY))
        if resp.status == 200:
            self.learn(headers.get("Origin", ""), kept)
        if resp.status != 200:
            return Reply(resp, f"status-{resp.status}", {}, {}, [], kept)
        try:
            answers, failed, anonymous = self.spec.split(resp.body)
        except msgspec.DecodeError:
            return Reply(resp, "unparseable", {}, {}, [], kept)
        return Reply(resp, None, answers, failed, anonymous, kept)

    def learn(self, origin: str, headers: CIMultiDictProxy[str]) -> None:
        """Remember the reply headers for this Origin (bounded, most recent kept)."""
        self.learned[origin] = CIMultiDictProxy(end_to_end(CIMultiDict(headers), drop=_REPLY_ONLY))
        self.learned.move_to_end(origin)
        while len(self.learned) > _LEARNED:
            self.learned.popitem(last=False)

    async def _send(self, group: str, pending: list[Pending]) -> list[Answer | Miss]:
        """The Batcher's send: one call for a window's items, each matched back by its sent id; a lone item goes
        to the single endpoint instead, and failed items' single calls start as soon as the reply is read."""
        if self.alone and len(pending) == 1:
            p = pending[0]
            return [Miss("alone", self._spawn(self.single(p.raw_path, p.headers, "alone", bounded=False)))]
        m = self.spec.match_on
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, p in enumerate(pending):
            sent = str(p.item[m])
            if sent in seen:  # the same id with other fields: results could not be told apart
                sent = f"{sent}~{i}"
                items.append({**p.item, m: sent})
            else:
                items.append(p.item)
            seen.add(sent)
        try:
            reply = await self.call(items, pending[0].headers)
        except UpstreamError as exc:
            reason = "batch-timeout" if isinstance(exc, UpstreamTimeout) else "batch-unreachable"
            return self._misses(pending, [reason] * len(items), whole=True)
        if reply.problem is not None:
            return self._misses(pending, [f"batch-{reply.problem}"] * len(items), whole=True)
        out: list[Answer | Miss | str] = []
        for item in items:
            sid = str(item[m])
            body = reply.answers.get(sid)
            if body is not None:
                out.append(Answer(body, reply.headers, item[m]))
            else:  # in failures, or absent (dropped past the backend's limit, or a failure without an id)
                out.append("failed" if sid in reply.failed else "missing")
        return self._misses(pending, out, whole=False)

    def _misses(self, pending: list[Pending], outcomes: Sequence[Answer | Miss | str], *,
                whole: bool) -> list[Answer | Miss]:
        """Each failed item's single call, started now (when the route falls back), and the breaker's verdict."""
        out: list[Answer | Miss] = []
        singles: list[asyncio.Task[UpstreamResponse]] = []
        for p, outcome in zip(pending, outcomes, strict=True):
            if not isinstance(outcome, str):
                out.append(outcome)
                continue
            single = self._spawn(self.single(p.raw_path, p.headers, outcome)) if self.fallback else None
            singles += [single] if single is not None else []
            out.append(Miss(outcome, single))
        if whole:
            self._verdict(bad=True, good=False)
        else:
            self._judge(sum(isinstance(o, Answer) for o in out), singles)
        return out


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a call whose waiters all left must not log "never retrieved"

    return done


def batch_routes(rules: RuleSet, upstream: UpstreamClient, metrics: Metrics,
                 arriving: Callable[[], bool] | None = None) -> dict[str, BatchRoute]:
    """A BatchRoute per rule with `[route.batch]`; all share the upstream's batch and fallback call limits.
    `arriving`: the listener has connections that have sent nothing yet (a lingering batch waits for them)."""
    calls = asyncio.Semaphore(upstream.config.max_batch_calls)
    fallbacks = asyncio.Semaphore(upstream.config.max_fallback_calls)
    return {
        r.name: BatchRoute(r, upstream, metrics, calls=calls, fallbacks=fallbacks, arriving=arriving)
        for r in rules.rules if r.route.batch is not None
    }
