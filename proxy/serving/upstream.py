"""The one client the proxy uses to reach the backend; aiohttp's exceptions become UpstreamError here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config.settings import UpstreamConfig
from proxy.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.telemetry.metrics import Metrics

_UNCLAIMED: Final = 5.0  # seconds an Overflow waits for its client before closing itself
# aiohttp would otherwise add these on its own, and the proxy must forward only what the client sent.
_SKIP_AUTO: Final = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})


class UpstreamResponse(msgspec.Struct, frozen=True):
    """A complete upstream answer, body read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Overflow:
    """An answer too large to keep, still open: its first bytes read, the rest for its one client to stream.

    Whoever takes it streams and closes it; one that nobody takes (its client left) closes itself shortly."""

    def __init__(self, resp: aiohttp.ClientResponse, prefix: bytes, stack: AsyncExitStack) -> None:
        self.resp, self.prefix, self._stack = resp, prefix, stack
        self.status, self.headers = resp.status, resp.headers
        self._timer = asyncio.get_running_loop().call_later(_UNCLAIMED, self._abandon)

    def take(self) -> aiohttp.ClientResponse:
        self._timer.cancel()
        return self.resp

    async def close(self) -> None:
        self._timer.cancel()
        await self._stack.aclose()

    def _abandon(self) -> None:
        self.resp.close()  # nobody streams it: drop the connection rather than hold it


class UpstreamClient:
    """One pooled ClientSession for the life of the proxy, with bounded connections and timeouts from config."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.base = URL(config.url)
        self._root = str(self.base.origin()) + self.base.raw_path.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.max_connections, enable_cleanup_closed=False),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
            ),
            auto_decompress=False,  # bytes pass through as the origin encoded them
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
        )

    async def close(self) -> None:
        await self.session.close()

    def url(self, raw_path_qs: str) -> URL:
        """The upstream URL for a request target, its path and query kept byte for byte."""
        return URL(self._root + raw_path_qs, encoded=True)

    async def call(
        self, route: str, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: Any = None
    ) -> UpstreamResponse:
        """`fetch`, instrumented: the one place an upstream call's time, status and error class are counted."""
        t0 = time.perf_counter()
        try:
            resp = await self.fetch(method, raw_path_qs, headers, body)
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
        stack = AsyncExitStack()
        try:
            resp = await stack.enter_async_context(self.open(method, raw_path_qs, headers))
            length = resp.content_length
            if length is not None and length > limit:
                out: UpstreamResponse | Overflow = Overflow(resp, b"", stack)
            else:
                try:
                    body = await resp.read() if length is not None else await _read_upto(resp, limit + 1)
                    if len(body) > limit:
                        out = Overflow(resp, body, stack)
                    else:
                        out = UpstreamResponse(resp.status, resp.headers, body)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise _convert(exc, self.url(raw_path_qs)) from exc
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, UpstreamError) and self.metrics is not None:
                self.metrics.upstream_error(route, type(exc).__name__)
            raise
        if isinstance(out, UpstreamResponse):
            await stack.aclose()
        if self.metrics is not None:
            self.metrics.upstream_call(route, out.status, time.perf_counter() - t0)
        return out

    async def fetch(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: Any = None
    ) -> UpstreamResponse:
        """Send a request and read the whole answer; a body cut short is an error, never a response."""
        async with self.open(method, raw_path_qs, headers, body) as resp:
            try:
                data = await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _convert(exc, self.url(raw_path_qs)) from exc
            return UpstreamResponse(resp.status, resp.headers, data)

    @asynccontextmanager
    async def open(
        self, method: str, raw_path_qs: str, headers: CIMultiDict[str], body: Any = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose body the caller streams; errors while connecting are converted."""
        url = self.url(raw_path_qs)
        try:
            resp = await self.session.request(
                method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _convert(exc, url) from exc
        try:
            yield resp
        finally:
            resp.release()


async def _read_upto(resp: aiohttp.ClientResponse, n: int) -> bytes:
    """Up to n bytes of the body: fewer only at its end."""
    chunks, size = [], 0
    while size < n and (chunk := await resp.content.read(n - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _convert(exc: BaseException, url: URL) -> UpstreamError:
    where = f"{url.scheme}://{url.host}:{url.port}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"upstream {where} did not answer in time", url=str(url))
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError)):
        return UpstreamConnectError(f"cannot reach upstream {where}: {exc}", url=str(url))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream {where} cut the response body short", url=str(url))
    return UpstreamError(f"upstream {where} failed: {exc}", url=str(url))
