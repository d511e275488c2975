"""The proxy listener's connections: slow or silent clients are closed, their number is bounded, and requests
that HTTP/1.1 cannot serve as they came are answered (or put in origin-form) before they reach the handler.

aiohttp's low-level `web.Server` has an idle keep-alive timeout but nothing that bounds how long a client may take
to send its headers, no bound on connections, and it hands the handler HTTP/0.9 and HTTP/2.0 request lines,
absolute-form targets and `Expect: 100-continue` as they are. `ClientConnection` adds those on top of aiohttp's
RequestHandler; it relies on a few of its internals (the parsed-message queue, the request count, the idle waiter),
all in this one module, which the tests drive through real sockets.

    accept ──full?──> 503 JSON, close
      │
      └─> header timer ──(request headers complete)──> examine: version, target, Expect ──> handler
              └─(header_timeout)──> 408 JSON (bytes came) or close (silence)

With the fast lane on, a chunk is offered to it first (`_fast`); a request it parks (serving/parking.py) is held
here, with whatever the client sends behind it, until it is answered or handed to aiohttp as it came (`_woken`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import httptools
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config.settings import Config
from proxy.serving.fast_lane import MAX_FIELD, MAX_HEADERS, MAX_LINE, FastLane, RequestReader
from proxy.serving.fill import Fill
from proxy.serving.parking import LED, RESEND, Parked
from proxy.telemetry.log_throttle import LogThrottle

log = logging.getLogger("sidecache")

_RESERVED_FDS: Final = 64  # descriptors kept for the admin listener, logs, config files and Redis's subscriber
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_ARRIVING: Final = 0.005  # seconds after an accept that a silent new connection counts as a request on its way
_HANDED: Final = 0.001  # seconds after a new connection's first read that its request may still be on its way
_HOLD: Final = 64 * 1024  # bytes held behind a parked request (serving/parking.py) before reading pauses
_LINGER: Final = 2.0  # seconds a connection answered 408 stays open, half-closed, so the answer is read
_REASONS: Final = {400: "bad_request", 408: "request_timeout", 500: "internal_error",
                   505: "http_version_not_supported"}


def _raw_answer(status: str, error: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 answer written straight to a socket that has no request object (yet)."""
    body = msgspec.json.encode({"error": error, "message": message, "status": int(status.split()[0])})
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


_BUSY: Final = _raw_answer("503 Service Unavailable", "too_many_connections",
                           "the proxy has as many client connections open as it allows; try again shortly",
                           "Retry-After: 1\r\n")
_SLOW: Final = _raw_answer("408 Request Timeout", "request_timeout",
                           "the request headers did not arrive within the server's header timeout")
_UNREAD: Final = object()  # a connection whose peer address was not read yet


def connection_bound(config: Config) -> int:
    """`[server] max_connections`, or when 0, what the descriptor limit leaves after the upstream pools (the fills'
    own and aiohttp's two: serving/upstream.py), Redis and a reserve: past it, accept() itself would fail and lock
    out every client and the admin listener alike."""
    if config.server.max_connections:
        return config.server.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    up = config.upstream
    reserve = 2 * up.max_connections + up.max_passthrough_connections + config.redis.pool_size + _RESERVED_FDS
    return max(soft // 4, soft - reserve)


class ProxyServer(web.Server):
    """aiohttp's low-level server, whose connections are ClientConnections, at most `max_connections` at once."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], *,
                 header_timeout: float, max_connections: int, fast_lane: FastLane | None = None,
                 **kwargs: Any) -> None:
        # aiohttp's own defaults, set here so that the fast lane's reader refuses exactly what aiohttp refuses
        limits = {"max_line_size": MAX_LINE, "max_field_size": MAX_FIELD, "max_headers": MAX_HEADERS}
        super().__init__(handler, **(limits | kwargs))
        self.fast_lane = fast_lane  # None: every request through aiohttp
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open = 0  # accepted connections not yet closed
        self.unread = 0  # of those, connections that have sent nothing yet
        self.accepted_at = 0.0  # perf_counter at the last accept
        self.first_read_at = 0.0  # and when a new connection's first bytes were last read
        self.refused = 0  # connections turned away at the bound
        self.header_timeouts = 0  # connections closed because their headers did not come in time
        self.log_throttle = LogThrottle(log)

    def arriving(self) -> bool:
        """Requests are on their way: a connection accepted in the last few milliseconds has sent nothing yet (one
        that stays silent longer is not counted: a preconnect, a health check), or one sent its first request
        a moment ago, which aiohttp's path takes a few loop turns to hand to the handler."""
        now = time.perf_counter()
        return (self.unread > 0 and now - self.accepted_at < _ARRIVING) or now - self.first_read_at < _HANDED

    def __call__(self) -> ClientConnection:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def _make_request(self, message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                      writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
        request = web.BaseRequest(message, payload, protocol, writer, task, self._loop)
        if isinstance(protocol, ClientConnection) and (handed := protocol._handover) is not None:
            protocol._handover = None  # handed over by the fast lane: why, or the fill it led
            if isinstance(handed, str):
                request[RESEND] = handed
            else:
                request[LED] = handed
        return request


class ClientConnection(RequestHandler):
    """One client connection: aiohttp's RequestHandler plus a header timer, the connection bound and a look at
    each request line before it is handled."""

    def __init__(self, server: ProxyServer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._server = server
        self._timer: asyncio.TimerHandle | None = None
        self._bytes_since_armed = False
        self._accepted = False
        self._discarding = False  # answered 408: what still arrives is dropped until the connection closes
        self._reader: RequestReader | None = RequestReader() if server.fast_lane is not None else None
        self._peer_address: object = _UNREAD
        self._unread = False  # accepted and nothing read from it yet (counted in the server's `unread`)
        self._parked: Parked | None = None  # the fast lane parked this connection's request (serving/parking.py)
        self._parked_data = b""  # that request, as it came
        self._held: list[bytes] = []  # what came behind it meanwhile, read once it is answered or handed over
        self._held_bytes = 0
        self._holding = False  # reading paused: more than _HOLD bytes came behind a parked request
        # the next request aiohttp reads was parked: a follower to pass through (why), or a leader to stream its fill
        self._handover: str | Fill | None = None

    # -- the bound

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server.open >= server.max_connections:
            server.refused += 1
            stream = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
            stream.write(_BUSY)
            stream.close()  # after the write is flushed; this protocol never starts
            return
        self._accepted = True
        server.open += 1
        server.unread += 1
        server.accepted_at = time.perf_counter()
        self._unread = True
        super().connection_made(transport)
        self._arm()  # silence from the start counts as well as a trickle

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._accepted:
            return
        self._accepted = False
        self._server.open -= 1
        self._read(came=False)
        self._disarm()
        if self._reader is not None and self._server.fast_lane is not None:
            self._server.fast_lane.release(self._reader)
        super().connection_lost(exc)

    # -- the header timer

    def data_received(self, data: bytes) -> None:
        if not self._accepted or self._discarding:
            return
        if self._unread:
            self._read()
        if self._parked is not None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > _HOLD and not self._holding and self.transport is not None:
                self._holding = True  # as aiohttp's own queue does when full: the client waits, memory does not grow
                self.transport.pause_reading()
            return
        if self._reader is not None and self._fast(data):
            return
        self._to_aiohttp(data)

    def _read(self, *, came: bool = True) -> None:
        """The connection's first bytes came (or it closed): it is no longer a request on its way."""
        if self._unread:
            self._unread = False
            self._server.unread -= 1
            if came:
                self._server.first_read_at = time.perf_counter()

    def _to_aiohttp(self, data: bytes) -> None:
        before = self._request_count
        idle = self._waiter is not None and not self._waiter.done()  # between requests
        super().data_received(data)
        if (parsed := self._request_count - before) > 0:
            if self._timer is not None:
                self._disarm()
            self._examine(parsed)
        elif data:
            if self._timer is None and idle:
                self._arm()  # a request began and its headers are not complete: from now on they are timed
            self._bytes_since_armed = True

    # -- the fast lane (serving/fast_lane.py)

    def _fast(self, data: bytes) -> bool:
        """A chunk that is one whole plain request, while aiohttp has nothing of this connection's in hand, offered
        to the fast lane; True if it answered. Every chunk is read, or is byte for byte a whole request the lane
        answered before, so request boundaries are always known."""
        reader, lane = self._reader, self._server.fast_lane
        assert reader is not None and lane is not None
        # At a request boundary, a chunk that is byte for byte a request answered before is that same whole request:
        # left unread, the parser stays where it is, at the boundary, as reading it would leave it.
        if not reader.open and self._idle() and lane.again(data, cast(asyncio.Transport, self.transport)):
            self._answered()
            return True
        try:
            whole = reader.read(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._reader = None  # malformed, or no longer HTTP: aiohttp's alone, its checks the only ones
            return False
        if not whole or not self._idle():
            return False
        got = lane.take(reader, data, cast(asyncio.Transport, self.transport), self._peer)
        if got is False:
            return False
        if got is True:
            self._answered()
        else:
            self._park(got, data)
        return True

    def _park(self, parked: Parked, data: bytes) -> None:
        """Hold the request until what it waits on is done: its headers came (no header timer), and it is not idle
        (no keep-alive close); aiohttp, which has nothing of this connection's in hand, is not told of it."""
        self._parked, self._parked_data = parked, data
        self._disarm()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        parked.on.add_done_callback(self._woken)

    def _woken(self, _: object) -> None:
        """What the parked request waited on is done: answer it, park it again, or hand it to aiohttp as it came;
        then read what came behind it, in order."""
        parked, data = self._parked, self._parked_data
        lane, reader = self._server.fast_lane, self._reader
        assert parked is not None and lane is not None and reader is not None
        self._parked, self._parked_data = None, b""
        transport = self.transport
        if not self._accepted or transport is None:
            lane.dropped(parked)
            return
        if self._idle():
            got = lane.resume(parked, reader, data, transport, self._peer)
        else:  # closing (a shutdown): aiohttp answers or drops it
            lane.dropped(parked)
            got = False
        if got is True:
            self._answered()
        elif got is False:
            self._to_aiohttp(data)
        elif isinstance(got, (str, Fill)):  # passed through on its own, or its fill streamed (the factory marks it)
            self._handover = got
            self._to_aiohttp(data)
        else:
            self._park(got, data)
            return
        held, self._held, self._held_bytes = self._held, [], 0
        if self._holding:
            self._holding = False
            transport.resume_reading()  # before the held bytes are read: aiohttp may pause it again itself
        for chunk in held:
            self.data_received(chunk)

    def _idle(self) -> bool:
        """aiohttp has nothing of this connection's in hand, so an answer written now keeps the order.

        That holds once its last answer is written whole (`_request_in_progress` ends after finish_response) and no
        request waits: its loop may not be back at its waiter yet, but what it still does (keep-alive bookkeeping)
        writes nothing. Waiting for the waiter instead would send the next request of a connection the slow path
        just answered to the slow path again, which on a busy connection pins it there (the reference trace: 34-68%
        of hits in the fast lane, 99.7% now)."""
        return not (self._request_in_progress or self._messages or self._upgraded or self._close
                    or self._force_close or self._payload_parser is not None or self.transport is None)

    def _answered(self) -> None:
        """After a fast-lane answer: the timers as aiohttp leaves them after an answer of its own."""
        self._disarm()  # its headers came: the header timer starts again with the next request's first byte
        if self._keepalive_timeout > 0:  # idle from now, as aiohttp counts after an answer of its own
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _peer(self) -> str | None:
        """The client's address, read once per connection (it cannot change)."""
        if self._peer_address is _UNREAD:
            peer = self.peername
            self._peer_address = peer[0] if isinstance(peer, tuple) else peer
        return cast("str | None", self._peer_address)

    def _arm(self) -> None:
        self._disarm()
        self._bytes_since_armed = False
        self._timer = self._loop.call_later(self._server.header_timeout, self._expired, self._request_count)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, count: int) -> None:
        """No request's headers completed since the timer was armed: answer 408 if bytes came, then close."""
        self._timer = None
        if self._request_count != count or self.transport is None:
            return
        self._server.header_timeouts += 1
        if not self._bytes_since_armed:
            self.force_close()
            return
        # 408, then FIN, then whatever still comes is dropped for a moment: closing outright while the client
        # writes would reset the connection, and a reset can destroy the 408 before the client reads it.
        self._discarding = True
        self.transport.write(_SLOW)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(_LINGER, self.force_close)

    # -- request lines

    def _examine(self, parsed: int) -> None:
        """The messages just parsed (the right end of aiohttp's queue), checked or rewritten before handling."""
        queue = self._messages
        first = len(queue) - parsed
        for i in range(first, len(queue)):
            message, payload = queue[i]
            if not isinstance(message, RawRequestMessage):
                continue
            if message.version[0] != 1:  # HTTP/0.9 or 2.0 as text: not a version this listener speaks
                queue[i] = (_ErrInfo(status=505, exc=ValueError(f"HTTP/{message.version[0]}.{message.version[1]}"),
                                     message="only HTTP/1.0 and HTTP/1.1 are served here"), payload)
                continue
            if not message.path.startswith("/"):
                rewritten = _origin_form(message)
                if rewritten is None:
                    queue[i] = (_ErrInfo(status=400, exc=ValueError(message.path[:100]),
                                         message="the request target must be a path or an absolute http(s) URL"),
                                payload)
                    continue
                message = rewritten
                queue[i] = (message, payload)
            if "Expect" in message.headers:  # nothing else is being answered: a 100 cannot land inside a response
                queue[i] = (self._expect(message, alone=i == 0 and not self._request_in_progress), payload)

    def _expect(self, message: RawRequestMessage, *, alone: bool) -> RawRequestMessage:
        """Answer `Expect: 100-continue` here (RFC 9110 10.1.1), as nginx does, and keep the header from the
        upstream, which would otherwise hold the body back for a 100 of its own. Behind a pipelined request
        still being answered, no 100 is sent: the client sends its body after its own short wait."""
        if message.headers["Expect"].lower() == "100-continue" and message.version[1] >= 1 and alone \
                and self.transport is not None:
            self.transport.write(_CONTINUE)
        headers = CIMultiDict(message.headers)
        del headers["Expect"]
        raw = tuple((k, v) for k, v in message.raw_headers if k.lower() != b"expect")
        return message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw)

    # -- errors aiohttp answers itself: JSON like every other answer of the proxy, and a bounded log

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        kind = _REASONS.get(status, "bad_request")
        if self._reader is not None and self._server.fast_lane is not None:
            self._server.fast_lane.release(self._reader)  # a request aiohttp refused is never dispatched
        if status == 500:
            self._server.log_throttle.warning(("listener", kind), "unhandled error answering %s %s: %r",
                                              request.method, request.path, exc)
        else:
            log.debug("bad request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp: a response is on its way, the connection is broken
            raise ConnectionError("response is sent already, cannot send another response with the error message")
        if status in (400, 505) and message:  # the parser's or our own reason, its first line only
            text = message.split("\n", 1)[0].rstrip(": ")
        else:
            text = _MESSAGES.get(status, "the request failed")
        body = msgspec.json.encode({"error": kind, "message": text, "status": status})
        resp = web.Response(status=status, body=body, content_type="application/json")
        resp.force_close()
        return resp


_MESSAGES: Final = {500: "the proxy failed to answer this request; the log has the detail"}


def _origin_form(message: RawRequestMessage) -> RawRequestMessage | None:
    """An absolute-form target (`GET http://host/x HTTP/1.1`) as path and query, its authority as the Host
    (RFC 9112 3.2.2: a server must accept it, and ignore the Host header then); None for any other form."""
    url = message.url
    if not url.is_absolute() or url.scheme not in ("http", "https") or not url.raw_host:
        return None
    target = url.raw_path_qs or "/"
    authority = url.raw_authority
    headers = CIMultiDict(message.headers)
    headers["Host"] = authority
    raw = tuple((k, v) for k, v in message.raw_headers if k.lower() != b"host") + ((b"Host", authority.encode()),)
    return message._replace(path=target, url=URL(target, encoded=True), headers=CIMultiDictProxy(headers),
                            raw_headers=raw)
