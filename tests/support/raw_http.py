"""Requests written byte for byte on a raw socket, for what a client library would normalise away: the exact
bytes of a request, or one request split across two writes (which the fast lane leaves to aiohttp)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from yarl import URL


async def exchange(url: str, *chunks: bytes, answers: int = 1, head: bool = False) -> bytes:
    """Send `chunks` as separate writes on one connection (a short pause between them), read `answers` answers."""
    u = URL(url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.05)  # a separate read on the proxy's side
            writer.write(chunk)
            await writer.drain()
        got = b""
        for _ in range(answers):
            top = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", top)
            body = await reader.readexactly(int(length.group(1))) if length and not head else b""
            got += top + body
        return got
    finally:
        writer.close()


def raw_get(path: str, *extra: str, method: str = "GET") -> bytes:
    """A GET (or `method`) of `path` as HTTP/1.1 bytes, Host 127.0.0.1, with `extra` header lines."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def undated(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


async def counter(http: aiohttp.ClientSession, admin: str, name: str) -> float:
    """A label-less counter from the admin listener's /metrics; -1 when the proxy does not export it."""
    async with http.get(f"{admin}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{re.escape(name)}_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


async def fast_hits(http: aiohttp.ClientSession, admin: str) -> float:
    return await counter(http, admin, "sidecache_fast_lane_hits")


class Client:
    """One raw keep-alive connection: requests written as the test says, answers read whole, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Client:
        u = URL(url)
        return cls(*await asyncio.open_connection(u.host, u.port))

    async def send(self, *chunks: bytes) -> None:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.05)  # a separate read on the proxy's side: aiohttp's, not the fast lane's
            self.writer.write(chunk)
            await self.writer.drain()

    async def answer(self) -> bytes:
        top = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: (\d+)", top)
        return top + (await self.reader.readexactly(int(length.group(1))) if length else b"")

    def close(self) -> None:
        self.writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: str) -> str | None:
    found = re.search(rf"(?i)\r\n{re.escape(name)}: ([^\r]*)".encode(), answer)
    return found.group(1).decode() if found else None


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]
