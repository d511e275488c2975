"""The hit fast lane: a fresh hit answered straight from the connection, without aiohttp's request machinery.

aiohttp stays the proxy. Each client connection keeps an httptools parser (llhttp, as uvicorn uses) that reads
every byte the client sends, so it always knows where one request ends and the next begins. When a chunk is
exactly one complete, plain GET or HEAD (no body, no framing headers, no Expect, no Upgrade, keep-alive, ASCII
only), arriving while aiohttp has nothing in flight on that connection, the handler is asked for a fresh memory
hit (`ProxyHandler.fast`: the same memo, sharing check, decision and answer as the slow path, counted in the same
metrics and access log). Anything else goes to aiohttp as it came, whose framing checks stay the only ones; the
next request on the connection gets its own chance, so no connection is pinned to either path.

    chunk ─> httptools (always) ─ one plain GET/HEAD, aiohttp idle? ─> ProxyHandler.fast ─ hit ─> transport.write
                                         │                                 └ fill in flight, or its own ─> parked
                                         └ no ───────────────────────────────┴ None ─> aiohttp (data_received)

A request that would only wait for a fill in flight, or for the dispatch of an identical first request that
aiohttp has, is parked on it and answered as a collapsed follower (`resume`, `ProxyHandler.follow`). A
ruled miss that memory holds nothing for, with no fill in flight, is parked on a fill started for it, and answered
as the slow path's leader (`ProxyHandler.led`); with Redis, that fill asks Redis first, and what it finds there is
the slow path's to answer (`RuledLane.lead`).

Before any of that, a chunk that is byte for byte a request answered here before, at a request boundary, is
answered with that same answer if nothing it was decided from changed (serving/replay.py), without being read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.serving.answer import StoredAnswer
from proxy.serving.fill import Fill
from proxy.serving.inbound import Inbound
from proxy.serving.parking import Parked, Parking
from proxy.serving.replay import Basis, Replays

_WRITE_BACKLOG: Final = 64 * 1024  # a client not reading its answers: aiohttp's writer, which waits, answers it
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
# What aiohttp's parser refuses (400) besides framing: the proxy listener gives aiohttp these limits explicitly
# (ProxyServer), and a request past any of them, or repeating a header aiohttp allows once, is left to aiohttp.
MAX_LINE: Final = 8190  # the request target
MAX_FIELD: Final = 8190  # a header's name, and its name and value together
MAX_HEADERS: Final = 128
_ONCE: Final = frozenset({"content-location", "content-range", "content-type", "etag", "host", "max-forwards",
                          "server", "user-agent"})  # aiohttp's singletons, framing ones aside


class Asked(Protocol):
    """What the fast lane asks of the handler (serving/handler.py `ProxyHandler`)."""

    replays: Replays
    parking: Parking  # targets announced by a request handed to aiohttp, not dispatched yet

    def knows(self, target: str) -> bool:
        """The target was seen before (remembered with its rule, or as one no rule matches)."""
        ...

    def fast(self, inb: Inbound) -> tuple[StoredAnswer, Basis] | Parked | None:
        """A fresh memory hit, answered and counted, with what it was decided from; the fill in flight a request
        would only wait for, or one started for it; None for anything else."""
        ...

    def led(self, inb: Inbound, fill: asyncio.Future[Fill]) -> StoredAnswer | Fill | str | None:
        """A request whose own fill (`fast`) is done, answered and counted as the slow path's leader (a follower,
        when another process fetched it); a Fill: its answer, too large to keep, for aiohttp to stream; a str:
        aiohttp's to pass through with that detail; None: aiohttp's to serve."""
        ...

    def follow(self, inb: Inbound, fill: asyncio.Future[Fill]) -> StoredAnswer | str | None:
        """A request parked on `fill`, answered and counted as a collapsed follower; a str: aiohttp's to pass through
        with that detail; None: aiohttp's to serve."""
        ...

    def replayed(self, basis: Basis, started: float) -> bool:
        """A kept answer is still the answer (and is counted); False if anything it was decided from changed."""
        ...


class RequestReader:
    """One connection's httptools parser and what it read of the last request (its callbacks)."""

    __slots__ = ("parser", "url", "headers", "open", "completed", "plain", "connection", "once", "announced")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[str, str]] = []  # latin-1, which is ASCII for every request the lane answers
        self.open = False  # a request has begun and not ended: the chunk boundary is not a request boundary
        self.completed = 0  # requests completed in the chunk being read
        self.plain = True  # no header of the current request asks for something the fast lane does not do
        self.connection = b""  # its Connection header, lowercased
        self.once: set[str] = set()  # the singleton headers it carried
        self.announced: str | None = None  # the target this connection last announced (serving/parking.py)

    def on_message_begin(self) -> None:
        self.open, self.url, self.headers, self.plain, self.connection = True, b"", [], True, b""
        self.once.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        self.headers.append((key, value.decode("latin-1")))
        lower = key.lower()
        if lower in _FRAMING or len(name) + len(value) > MAX_FIELD or len(self.headers) > MAX_HEADERS:
            self.plain = False
        elif lower == "connection":
            self.connection += value.lower()
        elif lower in _ONCE:
            if lower in self.once:
                self.plain = False  # a second Host (or User-Agent...): aiohttp answers 400, so must this lane
            self.once.add(lower)

    def keep_alive(self, version: str) -> bool:
        """The client keeps the connection open (RFC 9112 9.3), read from the headers: llhttp's own flag is reset
        once a request is complete."""
        if version == "1.1":
            return b"close" not in self.connection
        return version == "1.0" and b"keep-alive" in self.connection

    def on_message_complete(self) -> None:
        self.open = False
        self.completed += 1

    def read(self, data: bytes) -> bool:
        """Read a chunk; True if it was exactly one whole plain request, which may then be answered here.
        Raises httptools' errors (malformed input, an upgrade): the connection is aiohttp's alone from then on."""
        boundary = not self.open
        self.completed = 0
        self.parser.feed_data(data)
        return (boundary and self.completed == 1 and not self.open and self.plain and data.isascii()
                and len(self.url) <= MAX_LINE and data.count(b"\n") == data.count(b"\r\n"))


class FastLane:
    """The proxy listener's fast lane: the questions it asks the handler, the answers it keeps to write again
    (serving/replay.py), and how many answers it wrote."""

    def __init__(self, handler: Asked) -> None:
        self.handler = handler
        self.replays = handler.replays
        self.served = 0  # hits written by the fast lane, replays included
        self.followed = 0  # collapsed followers parked on a fill and answered here (serving/parking.py)
        self.misses = 0  # requests whose fill the lane started itself and answered here (serving/parking.py)
        self.parked = 0  # followers parked on a fill now (counted with the coalescer's waiters)

    def again(self, data: bytes, transport: asyncio.Transport) -> bool:
        """Answer a chunk that is byte for byte a request answered before, with that answer, if the handler finds
        nothing it was decided from changed; False (and it is no longer kept when stale) leaves it to be read."""
        kept = self.replays.get(data)
        if kept is None or transport.get_write_buffer_size() > _WRITE_BACKLOG:
            return False
        answer, basis = kept
        if not self.handler.replayed(basis, time.perf_counter()):
            self.replays.drop(data)
            return False
        transport.write(answer)
        self.served += 1
        self.replays.replayed += 1
        return True

    def take(self, reader: RequestReader, data: bytes, transport: asyncio.Transport,
             peer: Callable[[], str | None], *, announce: bool = True) -> bool | Parked:
        """Answer the request `reader` just read (the whole of `data`), if it is a fresh hit; False leaves it to
        aiohttp; Parked: it waits on a fill or on another request's dispatch (serving/parking.py), to be `resume`d.
        An answer written in one piece is kept to be written again."""
        parser = reader.parser
        verb = parser.get_method()
        if verb != b"GET" and verb != b"HEAD":
            return False
        version = parser.get_http_version()
        url = reader.url
        if not reader.keep_alive(version) or not url.startswith(b"/"):
            return False
        if version == "1.1" and "host" not in reader.once:
            return False  # an HTTP/1.1 request without a Host is aiohttp's to refuse (400)
        if transport.get_write_buffer_size() > _WRITE_BACKLOG:
            return False
        target = url.decode("latin-1")
        handler = self.handler
        known = handler.knows(target)
        if not known and "host" not in reader.once:  # a target not seen yet is dispatched here only with its Host
            return self._announce(reader, target) if announce else False
        headers = CIMultiDictProxy(CIMultiDict(reader.headers))
        method = "GET" if verb == b"GET" else "HEAD"
        inb = Inbound.parsed(method, target, headers, time.perf_counter(), peer(), headers.get("Host"))
        found = handler.fast(inb)
        if found is None:
            return False if known or not announce else self._announce(reader, target)
        if isinstance(found, Parked):
            self.parked += not found.leads
            return found
        resp, basis = found
        pieces = _write(resp, transport, version, method == "HEAD")
        self.served += 1
        if len(pieces) == 1:  # a large body is its own piece, the stored bytes: never copied to be kept
            self.replays.keep(data, pieces[0], basis)
        return True

    def _announce(self, reader: RequestReader, target: str) -> bool | Parked:
        """A target not seen yet goes to aiohttp, announced; or waits for the one announced before it."""
        waiting = self.handler.parking.wait(target)
        if waiting is None:
            reader.announced = target  # handed to aiohttp, announced
            return False
        return waiting

    def resume(self, parked: Parked, reader: RequestReader, data: bytes, transport: asyncio.Transport,
               peer: Callable[[], str | None]) -> bool | Parked | str | Fill:
        """A parked request, once what it waited on is done: a fill's follower or leader answered (never kept to be
        written again: its Cache-Status is a miss's or a follower's), an announcement's asked again; False leaves it
        to aiohttp, a str too, to be passed through with that detail (serving/parking.py `RESEND`), a Fill too, its
        own answer, too large to keep, for aiohttp to stream (`LED`)."""
        if parked.inb is None:
            return self.take(reader, data, transport, peer, announce=False)
        resp: StoredAnswer | Fill | str | None
        if parked.leads:
            resp = self.handler.led(parked.inb, parked.on)
        else:
            self.parked -= 1
            resp = self.handler.follow(parked.inb, parked.on)
        if resp is None:
            return False
        if isinstance(resp, (str, Fill)):
            return resp
        parser = reader.parser  # it still holds the parked request's method and version
        _write(resp, transport, parser.get_http_version(), parser.get_method() == b"HEAD")
        if parked.leads:
            self.misses += 1
        else:
            self.followed += 1
        return True

    def release(self, reader: RequestReader) -> None:
        """The connection's request ended without reaching the handler (aiohttp refused it, the client left): what
        waits on its announcement asks again now, not after `parking`'s timeout. Once dispatched, a no-op."""
        if reader.announced is not None:
            self.handler.parking.dispatched(reader.announced)
            reader.announced = None

    def dropped(self, parked: Parked) -> None:
        """A parked request whose client left before what it waited on was done: nothing to write."""
        if parked.inb is not None and not parked.leads:
            self.parked -= 1


def _write(resp: StoredAnswer, transport: asyncio.Transport, version: str, head: bool) -> tuple[bytes, ...]:
    """Write an answer to an HTTP/`version` request the client keeps the connection open after."""
    pieces = resp.encode(0 if version == "1.0" else 1, True, head)
    for piece in pieces:
        transport.write(piece)
    return pieces
