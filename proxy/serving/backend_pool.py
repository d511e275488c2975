"""The fills' HTTP/1.1 client: one exchange at a time on pooled keep-alive connections, parsed by httptools.

A fill is the simplest exchange there is: a GET, or the proxy's own batch POST with its body in hand, and an answer
read whole (or, too large to keep, streamed to its one client). aiohttp's ClientSession costs about 50 us of CPU per
request before its bytes are on the wire, and a burst of cold misses pays that in series, each miss's upstream call
waiting for the ones before it. Here the request is one `transport.write` of bytes built in one join, and the answer is
parsed by llhttp (httptools, the parser the fast lane and uvicorn use). aiohttp stays the client of everything that
streams a client's own request (pass-through, WebSockets, the origin lane).

What the pool keeps from aiohttp's: at most `limit` connections, a wait for a free one bounded by `pool_timeout`
(then UpstreamBusy), `connect_timeout` to open one, `read_timeout` between two reads, idle connections closed after
`keepalive_timeout` (below the backend's own idle timeout), and a request that went out on a reused connection the
backend had just closed sent again once on another when it may be (a read: RFC 9112 9.3.1).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import Final

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamBusy, UpstreamConnectError, UpstreamError, UpstreamTimeout

_HIGH: Final = 1024 * 1024  # bytes of a streamed answer buffered before the socket stops being read
_NO_BODY: Final = frozenset({204, 304})


class Answer:
    """An answer's head, and its body: whole (`body`), or, when it outgrew the caller's limit, still arriving."""

    __slots__ = ("status", "reason", "headers", "body", "content_length", "_conn")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], body: bytes,
                 content_length: int | None, conn: _Conn | None = None) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.content_length = content_length
        self._conn = conn  # set while the rest of the body is still to be read (`rest`)

    @property
    def complete(self) -> bool:
        return self._conn is None

    async def rest(self) -> AsyncIterator[bytes]:
        """The body after `body`, as it arrives; raises UpstreamError when the backend cuts it short."""
        conn = self._conn
        if conn is None:
            return
        while (chunk := await conn.next_chunk()) is not None:
            yield chunk
        self._conn = None
        conn.pool.release(conn)

    def close(self) -> None:
        """Stop reading: the connection is dropped (what is left of the body will not be read)."""
        if (conn := self._conn) is not None:
            self._conn = None
            conn.transport.close()
            conn.pool.release(conn)


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the answer it is reading (httptools calls the `on_*` methods)."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.registered = False  # counted in the pool's `open` (from the moment it connected)
        self.paused = False  # reading stopped: a streamed answer's reader is behind
        self.used = False  # carried an exchange before: the backend may have closed it since
        self.idle_since = 0.0
        self._reset(None)

    def _reset(self, limit: int | None) -> None:
        self.limit = limit  # body bytes read whole; past them the answer is handed over still arriving
        self.waiter: asyncio.Future[Answer] | None = None
        self.got_bytes = False
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.length: int | None = None
        self.until_eof = False  # no length, not chunked: the body ends where the connection does
        self.head_done = self.done = self.streaming = False
        self.keep = True
        self.stream: collections.deque[bytes] = collections.deque()
        self.stream_bytes = 0
        self.stream_waiter: asyncio.Future[None] | None = None
        self.error: UpstreamError | None = None
        self.last_read = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or (self.done and not self.streaming):  # nothing was asked: a broken connection
            self.transport.close()
            return
        self.got_bytes = True
        self.last_read = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # a fill never switches protocols
            self._fail(UpstreamError(f"upstream {self.pool.where} sent a malformed answer: {exc!r}",
                                     url=self.pool.where))
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.lost(self)
        if self.done:
            return
        if self.head_done and self.until_eof:  # its body ends here (RFC 9112 6.3, item 8)
            self.on_message_complete()
            return
        where = self.pool.where
        if self.head_done:
            self._fail(UpstreamError(f"upstream {where} cut the response body short", url=where))
        else:
            self._fail(UpstreamConnectError(f"upstream {where} closed the connection before answering", url=where))

    # httptools
    def on_message_begin(self) -> None:
        if self.done:  # bytes past the answer: the connection can carry nothing more
            raise UpstreamError(f"upstream {self.pool.where} sent more than one answer", url=self.pool.where)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints, say): the final one follows
            self.raw_headers, self.reason = [], b""
            return
        self.status = status
        self.head_done = True
        self.keep = self.parser.should_keep_alive()
        chunked = False
        for name, value in self.raw_headers:
            low = name.lower()
            if low == b"content-length":
                self.length = int(value)
            elif low == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
        self.until_eof = self.length is None and not chunked and status not in _NO_BODY
        if self.limit is not None and self.length is not None and self.length > self.limit:
            self._hand_over()

    def on_body(self, body: bytes) -> None:
        if self.streaming:
            self.stream.append(body)
            self.stream_bytes += len(body)
            if self.stream_bytes > _HIGH and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self._wake_stream()
            return
        self.chunks.append(body)
        self.size += len(body)
        if self.limit is not None and self.size > self.limit:
            self._hand_over()

    def on_message_complete(self) -> None:
        if not self.head_done:  # an interim answer ended
            return
        self.done = True
        if self.streaming:
            self._wake_stream()
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._answer(b"".join(self.chunks), None))
        self.pool.release(self)

    # the pool's side
    def send(self, data: bytes, limit: int | None) -> asyncio.Future[Answer]:
        self._reset(limit)
        self.used = True
        self.waiter = waiter = self.pool.loop.create_future()
        self.last_read = self.pool.loop.time()
        self.transport.write(data)
        return waiter

    def timed_out(self) -> bool:
        """No byte for `read_timeout` while an answer is awaited: the exchange fails and the connection goes."""
        if self.done or self.lost or self.paused or self.pool.loop.time() - self.last_read < self.pool.read_timeout:
            return False
        self._fail(UpstreamTimeout(f"upstream {self.pool.where} did not answer in time", url=self.pool.where))
        self.transport.close()
        return True

    async def next_chunk(self) -> bytes | None:
        """The next piece of a streamed body; None at its end."""
        while not self.stream:
            if self.error is not None:
                raise self.error
            if self.done:
                return None
            self.stream_waiter = self.pool.loop.create_future()
            try:
                await self.stream_waiter
            finally:
                self.stream_waiter = None
        chunk = self.stream.popleft()
        self.stream_bytes -= len(chunk)
        if self.paused and self.stream_bytes <= _HIGH // 4 and not self.lost:
            self.paused = False
            self.last_read = self.pool.loop.time()
            self.transport.resume_reading()
        return chunk

    def _answer(self, body: bytes, conn: _Conn | None) -> Answer:
        headers = CIMultiDict((n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                              for n, v in self.raw_headers)
        return Answer(self.status, self.reason.decode("utf-8", "surrogateescape"), CIMultiDictProxy(headers), body,
                      self.length, conn)

    def _hand_over(self) -> None:
        """Past the limit: the waiter gets what was read, and the rest arrives through `next_chunk`."""
        self.streaming = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._answer(b"".join(self.chunks), self))
        self.chunks = []

    def _wake_stream(self) -> None:
        if (w := self.stream_waiter) is not None and not w.done():
            w.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.done = self.done or not self.streaming
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._wake_stream()


class BackendPool:
    """Keep-alive connections to one backend, handed out one exchange at a time."""

    def __init__(self, host: str, port: int, *, limit: int, connect_timeout: float, read_timeout: float,
                 keepalive_timeout: float, pool_timeout: float, tls: bool = False) -> None:
        self.host, self.port, self.where = host, port, f"{'https' if tls else 'http'}://{host}:{port}"
        self.tls = ssl.create_default_context() if tls else None
        self.limit, self.connect_timeout, self.read_timeout = limit, connect_timeout, read_timeout
        self.keepalive_timeout, self.pool_timeout = keepalive_timeout, pool_timeout
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []  # most recently used last: taken first, so the fewest connections stay warm
        self.open = 0  # connections open or opening, idle or not
        self.busy: set[_Conn] = set()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.retries = 0  # reads sent again after a reused connection failed under them
        self._sweep: asyncio.TimerHandle | None = None
        self._reads: asyncio.TimerHandle | None = None
        self.closed = False

    async def exchange(self, data: bytes, *, limit: int | None = None, again: bool = False) -> Answer:
        """Send one request's bytes and read its answer: whole, or past `limit` body bytes handed over still
        arriving (`Answer.rest`). `again`: the request is a read, sent once more on another connection when a reused
        one closed under it before any byte of the answer came."""
        while True:
            conn = await self._acquire()
            reused = conn.used
            try:
                waiter = conn.send(data, limit)
            except Exception as exc:  # the transport was closing under us
                self.release(conn)
                if again and reused:
                    again = False
                    self.retries += 1
                    continue
                raise UpstreamConnectError(f"cannot reach upstream {self.where}: {exc}", url=self.where) from exc
            self._watch_reads()
            try:
                return await waiter
            except UpstreamConnectError:
                if not (again and reused and not conn.got_bytes):
                    raise
                again = False
                self.retries += 1
                await asyncio.sleep(0)  # closes that came in with this one are seen before the next pick
            except asyncio.CancelledError:
                if not conn.done:  # the answer will never be read: the connection cannot carry another
                    conn.transport.close()
                self.release(conn)
                raise

    async def _acquire(self) -> _Conn:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.lost or conn.transport.is_closing():
                    continue
                if self.loop.time() - conn.idle_since >= self.keepalive_timeout:
                    conn.transport.close()
                    continue
                self.busy.add(conn)
                return conn
            if self.open < self.limit:
                return await self._connect()
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.pool_timeout)
            except TimeoutError:
                raise UpstreamBusy(f"no connection to upstream {self.where} came free in time",
                                   url=self.where) from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the slot it was woken for goes to the next in line
                raise
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)

    async def _connect(self) -> _Conn:
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.tls),
                self.connect_timeout)
        except TimeoutError:
            self._gone()
            raise UpstreamTimeout(f"upstream {self.where} did not accept a connection in time",
                                  url=self.where) from None
        except OSError as exc:
            self._gone()
            raise UpstreamConnectError(f"cannot reach upstream {self.where}: {exc}", url=self.where) from exc
        except BaseException:
            self._gone()
            raise
        conn.registered = True
        self.busy.add(conn)
        return conn

    def release(self, conn: _Conn) -> None:
        """An exchange is over: the connection is kept for the next when it can carry one, else closed."""
        if conn not in self.busy:
            return
        self.busy.discard(conn)
        if conn.lost or not (conn.done and conn.keep) or conn.error is not None or self.closed:
            if not conn.lost:
                conn.transport.close()  # `lost` comes later, and frees its slot
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.keepalive_timeout, self._expire)
        self._wake()

    def lost(self, conn: _Conn) -> None:
        """A connection closed (by either side): its slot is free."""
        self.busy.discard(conn)
        if conn.registered:
            conn.registered = False
            self._gone()

    def _gone(self) -> None:
        self.open -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Idle connections past keepalive_timeout are closed before the backend closes them under a request."""
        self._sweep = None
        now = self.loop.time()
        keep = [c for c in self.idle if now - c.idle_since < self.keepalive_timeout and not c.lost]
        for conn in self.idle:
            if conn not in keep and not conn.lost:
                conn.transport.close()
        self.idle = keep
        if keep:
            self._sweep = self.loop.call_later(self.keepalive_timeout / 2, self._expire)

    def _watch_reads(self) -> None:
        """One timer for every exchange in flight: each is failed after `read_timeout` without a byte."""
        if self._reads is None:
            self._reads = self.loop.call_later(min(self.read_timeout, 1.0), self._check_reads)

    def _check_reads(self) -> None:
        self._reads = None
        for conn in list(self.busy):
            conn.timed_out()
        if self.busy:
            self._watch_reads()

    def close(self) -> None:
        self.closed = True
        for handle in (self._sweep, self._reads):
            if handle is not None:
                handle.cancel()
        for conn in [*self.idle, *self.busy]:
            if not conn.lost:
                conn.transport.close()
        self.idle.clear()


def request_bytes(method: str, target: str, host: str, headers: CIMultiDict[str], body: bytes | None) -> bytes:
    """One request's bytes. A header that would break the framing (a CR or LF in it) is refused, never sent."""
    lines = [f"{method} {target} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: {host}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise UpstreamError(f"a header for the upstream holds a line break or colon: {name!r}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + body if body else head
