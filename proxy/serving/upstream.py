"""The one client the proxy uses to reach the backend; aiohttp's exceptions become UpstreamError here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config.settings import UpstreamConfig
from proxy.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.telemetry.metrics import Metrics

# aiohttp would otherwise add these on its own, and the proxy must forward only what the client sent.
_SKIP_AUTO: Final = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})


class UpstreamResponse(msgspec.Struct, frozen=True):
    """A complete upstream answer, body read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


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


def _convert(exc: BaseException, url: URL) -> UpstreamError:
    where = f"{url.scheme}://{url.host}:{url.port}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"upstream {where} did not answer in time", url=str(url))
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError)):
        return UpstreamConnectError(f"cannot reach upstream {where}: {exc}", url=str(url))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream {where} cut the response body short", url=str(url))
    return UpstreamError(f"upstream {where} failed: {exc}", url=str(url))
