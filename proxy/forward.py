"""Pass-through for requests no rule caches: bodies stream both ways, WebSocket upgrades are piped."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import web

from .errors import UpstreamError
from .headers import VIA, add_forwarding, end_to_end
from .upstream import UpstreamClient

CHUNK: Final = 64 * 1024


async def forward(request: web.BaseRequest, upstream: UpstreamClient, cache_status: str) -> web.StreamResponse:
    """Stream the request to the upstream and its answer back, holding at most a chunk in memory."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _websocket(request, upstream, cache_status)
    headers = add_forwarding(
        end_to_end(request.headers, drop=("Host",)), client_ip=request.remote, proto=request.scheme, host=request.host
    )
    body = request.content if request.body_exists else None
    async with upstream.open(request.method, request.raw_path, headers, body) as up:
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=end_to_end(up.headers))
        resp.headers["Cache-Status"] = cache_status
        resp.headers.add("Via", VIA)
        await resp.prepare(request)
        try:
            async for chunk in up.content.iter_chunked(CHUNK):
                await resp.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            raise ConnectionResetError(f"upstream failed mid-body: {exc}") from exc
        await resp.write_eof()
        return resp


async def _websocket(request: web.BaseRequest, upstream: UpstreamClient, cache_status: str) -> web.StreamResponse:
    """Open the upstream socket first, so a refused upstream is a 502 rather than a socket closed at once."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    drop = ("Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")
    headers = add_forwarding(
        end_to_end(request.headers, drop=drop), client_ip=request.remote, proto=request.scheme, host=request.host
    )
    url = upstream.url(request.raw_path)
    try:
        up = await upstream.session.ws_connect(url, headers=headers, protocols=protocols, autoping=False)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise UpstreamError(f"cannot open WebSocket to upstream {url.host}:{url.port}: {exc}", url=str(url)) from exc
    ws = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), autoping=False)
    ws.headers["Cache-Status"] = cache_status
    await ws.prepare(request)  # type: ignore[arg-type]

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


async def _close_both(tasks: list[asyncio.Future[None]], ws: web.WebSocketResponse,
                      up: aiohttp.ClientWebSocketResponse) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await up.close(code=ws.close_code or aiohttp.WSCloseCode.OK)
    await ws.close(code=up.close_code or aiohttp.WSCloseCode.OK)
