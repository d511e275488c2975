"""Pass-through for requests no rule caches: bodies stream both ways, WebSocket upgrades are piped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamError
from proxy.serving.headers import NOBODY, VIA, Forwarding, end_to_end, upstream_headers
from proxy.serving.upstream import IDEMPOTENT, Overflow, Pool, UpstreamClient

CHUNK: Final = 64 * 1024
BODY_BYTES: Final = web.ResponseKey("body_bytes", int)  # what a relayed answer's body came to, for the access log
REPLAYABLE: Final = 64 * 1024  # an idempotent request's body up to this is read whole before it is sent


@dataclass
class Tee:
    """A copy of a streamed body kept for the cache, abandoned as soon as it outgrows `limit`."""

    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    headers: CIMultiDictProxy[str] | None = None  # the upstream's own, before the proxy added anything

    def add(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            self.limit = -1  # over the cap: stop keeping, keep streaming
            self.chunks.clear()
        elif self.limit >= 0:
            self.chunks.append(chunk)
            self.size += len(chunk)

    @property
    def body(self) -> bytes | None:
        return b"".join(self.chunks) if self.complete and self.limit >= 0 else None


class Divert(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a Decide to answer otherwise (a stale copy for an origin error): nothing was sent to the client."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"upstream answered {status}")


# Given the upstream's status and headers, before anything reaches the client: the Cache-Status to send,
# and a Tee when the body should also be kept for the cache (or Divert).
Decide = Callable[[int, CIMultiDictProxy[str]], tuple[str, Tee | None]]


async def forward(
    request: web.BaseRequest,
    upstream: UpstreamClient,
    cache_status: str | Decide,
    *,
    trust: Forwarding = NOBODY,
) -> tuple[web.StreamResponse, Tee | None]:
    """Stream the request to the upstream and its answer back, holding at most a chunk in memory (plus what a
    Tee keeps, bounded by its limit)."""
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    headers = upstream_headers(request.headers, "websocket" if websocket else "pass", peer=request.remote,
                               scheme=request.scheme, host=request.host, trust=trust)
    if websocket:
        assert isinstance(cache_status, str)
        return await _websocket(request, upstream, cache_status, headers), None
    body: bytes | aiohttp.StreamReader | None = request.content if request.body_exists else None
    if body is not None and request.method in IDEMPOTENT and 0 <= (request.content_length or -1) <= REPLAYABLE:
        body = await request.read()  # whole, so a retry on a fresh connection can send it again
    # An answer that may be stored is a fill; the rest stays on the streams pool, however long it lasts.
    pool: Pool = "fills" if callable(cache_status) else "streams"
    async with upstream.open(request.method, request.raw_path, headers, body, pool=pool) as up:
        status, tee = cache_status(up.status, up.headers) if callable(cache_status) else (cache_status, None)
        if tee is not None:
            tee.headers = up.headers
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=end_to_end(up.headers))
        resp.headers["Cache-Status"] = status
        resp.headers.add("Via", VIA)
        await resp.prepare(request)
        sent = 0
        try:
            async for chunk in up.content.iter_chunked(CHUNK):
                if tee is not None:
                    tee.add(chunk)
                await resp.write(chunk)
                sent += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            raise ConnectionResetError(f"upstream failed mid-body: {exc}") from exc
        await resp.write_eof()
        resp[BODY_BYTES] = sent
        if tee is not None:
            tee.complete = True
        return resp, tee


async def stream_overflow(request: web.BaseRequest, overflow: Overflow, headers: CIMultiDict[str],
                          cache_status: str) -> web.StreamResponse:
    """An answer too large to keep, streamed to the client whose fill fetched it, never held whole."""
    rest = overflow.take()
    try:
        resp = web.StreamResponse(status=overflow.status, reason=overflow.reason, headers=headers.copy())
        if overflow.content_length is not None:
            resp.content_length = overflow.content_length
        resp.headers["Cache-Status"] = cache_status
        resp.headers.add("Via", VIA)
        await resp.prepare(request)
        body = request.method != "HEAD"
        if overflow.prefix and body:
            await resp.write(overflow.prefix)
        async for chunk in rest:
            if body:
                await resp.write(chunk)
        await resp.write_eof()
    except UpstreamError as exc:
        raise ConnectionResetError(f"upstream failed mid-body: {exc}") from exc  # headers are gone already
    finally:
        await overflow.close()
    return resp


async def _websocket(request: web.BaseRequest, upstream: UpstreamClient, cache_status: str,
                     headers: CIMultiDict[str]) -> web.StreamResponse:
    """Open the upstream socket first, so a refused upstream is a 502 rather than a socket closed at once."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    up = await upstream.ws_connect(request.raw_path, headers, protocols)
    ws = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), autoping=False)
    ws.headers["Cache-Status"] = cache_status
    await ws.prepare(request)

    async def pipe(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        async for msg in src:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)

    tasks = [asyncio.ensure_future(pipe(ws, up)), asyncio.ensure_future(pipe(up, ws))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        # Shielded: when the client's connection drops the handler is cancelled, yet both closing
        # handshakes must still happen, or the upstream keeps a half-open socket.
        await asyncio.shield(_close_both(tasks, ws, up))
    return ws


async def _close_both(tasks: Sequence[asyncio.Future[None]], ws: web.WebSocketResponse,
                      up: aiohttp.ClientWebSocketResponse) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await up.close(code=ws.close_code or aiohttp.WSCloseCode.OK)
    await ws.close(code=up.close_code or aiohttp.WSCloseCode.OK)
