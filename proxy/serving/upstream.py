"""The one client the proxy uses to reach the backend; aiohttp's exceptions become UpstreamError here.

Three pools. Ruled fills, batch calls and a client's merged batch call, which send bytes in hand and read the answer
whole (or stream one too large to keep), go through serving/backend_pool.py: one write per request, answers parsed
by httptools. What streams a client's own request or its answer goes through aiohttp, on a ClientSession with its
own connector: `fills` for what may be stored (origin-cached GETs) and `streams` for what lives as long as its
client (WebSockets, streamed pass-through), so long-lived connections never take the slots that fills need. Each
pool holds at most `max_connections` (`max_passthrough_connections` for streams). Waiting for a free connection is
bounded: past `pool_timeout` the request fails as UpstreamBusy (503), never hangs until the client gives up.

Keep-alive: pooled connections are dropped after `keepalive_timeout`, below the backend's own idle timeout. A
request can still cross the backend's close of an idle connection on the wire; the idempotent methods are then
sent once more (RFC 9112 9.3.1: by the fills' pool, or by aiohttp itself), and so are the proxy's own batch calls,
which are reads sent as POST, when they failed on a reused connection. A client's POST is never sent twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import msgspec
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config.settings import UpstreamConfig
from proxy.errors import UpstreamBusy, UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.serving.backend_pool import Answer, BackendPool, request_bytes
from proxy.telemetry.metrics import Metrics

_UNCLAIMED: Final = 5.0  # seconds an Overflow waits for its client before closing itself
# aiohttp would otherwise add these on its own, and the proxy must forward only what the client sent.
_SKIP_AUTO: Final = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})
# RFC 9110 9.2.2; aiohttp retries these once itself when a pooled connection turns out closed.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
Pool = Literal["fills", "streams"]


class UpstreamResponse(msgspec.Struct, frozen=True):
    """A complete upstream answer, body read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Overflow:
    """An answer too large to keep, still open: its first bytes read, the rest for its one client to stream.

    Whoever takes it streams and closes it; one that nobody takes (its client left) closes itself shortly."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.status, self.reason, self.headers = answer.status, answer.reason, answer.headers
        self.prefix, self.content_length = answer.body, answer.content_length
        self._timer = asyncio.get_running_loop().call_later(_UNCLAIMED, answer.close)

    def take(self) -> AsyncIterator[bytes]:
        """The rest of the body, as it arrives (UpstreamError if the backend cuts it short)."""
        self._timer.cancel()
        return self._answer.rest()

    async def close(self) -> None:
        self._timer.cancel()
        self._answer.close()


@dataclass
class _Attempt:
    """What the pool said about one request's connection."""

    queued: bool = False  # waiting for a free connection right now: a timeout then is the pool's, not the socket's


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("sidecache_upstream_attempt", default=None)


class _Pool(aiohttp.TCPConnector):
    """aiohttp's connector, telling the request it connects (the `_ATTEMPT` set in the request's own task) whether
    it waited for a free connection. aiohttp's trace signals say so too, but send a signal for every step of every
    request: about a twentieth of a miss's CPU."""

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.queued = True  # until a pooled connection is handed over or a new one is being opened
        conn = await super().connect(req, traces, timeout)
        if attempt is not None:
            attempt.queued = False
        return conn

    async def _create_connection(self, req: ClientRequest, traces: list[Trace],
                                 timeout: aiohttp.ClientTimeout) -> ResponseHandler:
        """A new connection, opened once a slot is free: a timeout from here on is the socket's."""
        if (attempt := _ATTEMPT.get()) is not None:
            attempt.queued = False
        return await super()._create_connection(req, traces, timeout)


class UpstreamClient:
    """Two pooled ClientSessions for the life of the proxy, with bounded connections and timeouts from config."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.base = URL(config.url)
        self._root = str(self.base.origin()) + self.base.raw_path.rstrip("/")
        url = self.base
        self._host = url.host_port_subcomponent or ""
        self._path = url.raw_path.rstrip("/")
        self.fills = BackendPool(url.host or "127.0.0.1", url.port or 80, limit=config.max_connections,
                                 connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
                                 keepalive_timeout=config.keepalive_timeout, pool_timeout=config.pool_timeout,
                                 tls=url.scheme == "https")
        self.sessions: dict[Pool, aiohttp.ClientSession] = {
            "fills": self._session(config.max_connections),
            "streams": self._session(config.max_passthrough_connections),
        }
        self.session = self.sessions["fills"]

    def _session(self, limit: int) -> aiohttp.ClientSession:
        c = self.config
        return aiohttp.ClientSession(
            connector=_Pool(limit=limit, keepalive_timeout=c.keepalive_timeout, enable_cleanup_closed=False),
            # `connect` bounds the wait for a pooled connection plus opening one (`sock_connect`); which of the
            # two ran out is told apart by `_Attempt.queued`.
            timeout=aiohttp.ClientTimeout(total=None, connect=c.pool_timeout + c.connect_timeout,
                                          sock_connect=c.connect_timeout, sock_read=c.read_timeout),
            auto_decompress=False,  # bytes pass through as the origin encoded them
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
        )

    @property
    def retries(self) -> int:
        """Reads sent again after a reused connection failed under them (the fills' pool sends them; aiohttp
        sends the idempotent requests it streams again by itself, uncounted)."""
        return self.fills.retries

    async def close(self) -> None:
        self.fills.close()
        for session in self.sessions.values():
            await session.close()

    def url(self, raw_path_qs: str) -> URL:
        """The upstream URL for a request target, its path and query kept byte for byte."""
        return URL(self._root + raw_path_qs, encoded=True)

    async def call(
        self, route: str, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: bytes | None = None, *,
        retry_safe: bool = False,
    ) -> UpstreamResponse:
        """`fetch`, instrumented: the one place an upstream call's time, status and error class are counted."""
        t0 = time.perf_counter()
        try:
            resp = await self.fetch(method, raw_path_qs, headers, body, retry_safe=retry_safe)
        except UpstreamError as exc:
            if self.metrics is not None:
                self.metrics.upstream_error(route, type(exc).__name__)
            raise
        if self.metrics is not None:
            self.metrics.upstream_call(route, resp.status, time.perf_counter() - t0)
        return resp

    async def call_upto(
        self, route: str, method: str, raw_path_qs: str, headers: CIMultiDict[str], limit: int
    ) -> UpstreamResponse | Overflow:
        """`call` for an answer that may be too large to keep: read whole up to `limit` bytes, else handed over
        open (Overflow) for its client to stream, so no fill ever buffers more than the cache could keep."""
        t0 = time.perf_counter()
        try:
            got = await self._exchange(method, raw_path_qs, headers, None, limit, False)
        except UpstreamError as exc:
            if self.metrics is not None:
                self.metrics.upstream_error(route, type(exc).__name__)
            raise
        out = UpstreamResponse(got.status, got.headers, got.body) if got.complete else Overflow(got)
        if self.metrics is not None:
            self.metrics.upstream_call(route, out.status, time.perf_counter() - t0)
        return out

    async def fetch(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: bytes | None = None, *,
        retry_safe: bool = False,
    ) -> UpstreamResponse:
        """Send a request and read the whole answer; a body cut short is an error, never a response.

        `retry_safe`: the request is a read whatever its method (the proxy's own batch calls), so it may be sent
        again once when a reused connection failed before the answer came."""
        got = await self._exchange(method, raw_path_qs, headers, body, None, retry_safe)
        return UpstreamResponse(got.status, got.headers, got.body)

    async def _exchange(self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: bytes | None,
                        limit: int | None, retry_safe: bool) -> Answer:
        """One exchange on the fills' own pool (serving/backend_pool.py). A read (an idempotent method, or a
        `retry_safe` batch call) is sent again once when a reused connection closed under it."""
        data = request_bytes(method, self._path + raw_path_qs, self._host, headers, body)
        return await self.fills.exchange(data, limit=limit, again=method in IDEMPOTENT or retry_safe)

    @asynccontextmanager
    async def open(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: Any = None, *, pool: Pool = "fills",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose body the caller streams, through aiohttp; errors while connecting are converted.
        aiohttp itself sends an idempotent request again once when a pooled connection closed under it."""
        resp = await self._send(method, raw_path_qs, headers, body, pool)
        try:
            yield resp
        finally:
            resp.release()

    async def _send(self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: Any,
                    pool: Pool) -> aiohttp.ClientResponse:
        """The request sent through aiohttp and its answer's head read."""
        url = self.url(raw_path_qs)
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            return await self.sessions[pool].request(
                method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise convert(exc, url, attempt) from exc
        finally:
            _ATTEMPT.reset(token)

    async def ws_connect(
        self, raw_path_qs: str, headers: CIMultiDict[str], protocols: Iterable[str]
    ) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to the backend, on the streams pool: it holds its connection as long as its client."""
        url = self.url(raw_path_qs)
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            return await self.sessions["streams"].ws_connect(url, headers=headers, protocols=protocols,
                                                             autoping=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise convert(exc, url, attempt) from exc
        finally:
            _ATTEMPT.reset(token)


def convert(exc: BaseException, url: URL, attempt: _Attempt | None = None) -> UpstreamError:
    """The UpstreamError for an aiohttp or socket failure; its message (for the log, never a client) has detail."""
    where = f"{url.scheme}://{url.host}:{url.port}"
    if attempt is not None and attempt.queued and isinstance(exc, asyncio.TimeoutError):
        return UpstreamBusy(f"no connection to upstream {where} came free in time", url=str(url))
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"upstream {where} did not answer in time", url=str(url))
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError)):
        return UpstreamConnectError(f"cannot reach upstream {where}: {exc}", url=str(url))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream {where} cut the response body short", url=str(url))
    return UpstreamError(f"upstream {where} failed: {exc}", url=str(url))
