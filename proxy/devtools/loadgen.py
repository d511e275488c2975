"""A small HTTP/1.1 keep-alive load generator for `sidecache bench` when wrk is not installed.

Raw asyncio protocols, one request in flight per connection, bounded by count and time: it measures the
server, not a client library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """What one run measured."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Conn(asyncio.Protocol):
    """Sends the same request again when the previous answer is complete, after `think` seconds (0: at once)."""

    def __init__(self, request: bytes, result: LoadResult, deadline: float, done: asyncio.Future[None],
                 think: float = 0.0) -> None:
        self.request, self.result, self.deadline, self.done, self.think = request, result, deadline, done, think
        self.buf = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.deadline:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            ok = self.buf[9:10] in (b"2", b"3")
            self.buf = self.buf[end:]
            now = time.perf_counter()
            self.result.requests += 1
            self.result.errors += 0 if ok else 1
            self.result.latencies.append(now - self.sent_at)
            if self.think:
                asyncio.get_running_loop().call_later(self.think, self._send)
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run_load(host: str, port: int, path: str, *, connections: int, seconds: float,
                   think: float = 0.0) -> LoadResult:
    """Hammer one URL over `connections` keep-alive connections for `seconds`, then stop; with `think`, each
    connection waits that long after an answer before its next request (the time is not in the latencies)."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + seconds
    dones: list[asyncio.Future[None]] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        dones.append(done)
        await loop.create_connection(partial(_Conn, request, result, deadline, done, think), host, port)
    await asyncio.wait_for(asyncio.gather(*dones), seconds + 10)
    result.seconds = time.perf_counter() - started
    return result


class _Once(asyncio.Protocol):
    """One request on an open connection, sent when told; done when its whole answer is in."""

    def __init__(self) -> None:
        self.buf = b""
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0 or self.done.done():
            return
        head = self.buf[:head_end].lower()
        i = head.find(b"content-length:")
        j = head.find(b"\r\n", i)
        length = int(head[i + 15:j if j > 0 else None]) if i >= 0 else 0
        if len(self.buf) >= head_end + 4 + length:
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before the answer was complete"))


async def burst(host: str, port: int, paths: list[str], timeout: float = 30.0) -> list[float]:
    """Open one connection per path first, then send every GET at once: each answer's latency, in path order."""
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Once, host, port))[1] for _ in paths]
    await asyncio.sleep(0.1)  # let the server accept them all too: the clock is for answering, not for accepting
    t0 = time.perf_counter()
    for c, path in zip(conns, paths, strict=True):
        c.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    try:
        ends = await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), timeout)
    finally:
        for c in conns:
            c.transport.close()
    return [end - t0 for end in ends]


async def replay(host: str, port: int, paths: Iterable[str], concurrency: int, timeout: float = 120.0) -> list[float]:
    """Send the paths in order over `concurrency` keep-alive connections, each taking the next when it is free."""
    loop = asyncio.get_running_loop()
    queue = iter(paths)
    latencies: list[float] = []

    async def worker() -> None:
        _, conn = await loop.create_connection(_Once, host, port)
        try:
            for path in queue:
                conn.buf, conn.done = b"", loop.create_future()
                t0 = time.perf_counter()
                conn.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                latencies.append(await conn.done - t0)
        finally:
            conn.transport.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
    return latencies


def host_port(base: str) -> tuple[str, int]:
    """The host and port of a base URL such as http://127.0.0.1:8080."""
    u = urlsplit(base)
    return u.hostname or "127.0.0.1", u.port or 80
