"""A client's side of a request: what it got back (status, headers, body), and bounded load made of such gets."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import aiohttp
from multidict import CIMultiDict


class Answer(NamedTuple):
    """What one GET got; unpacks as (status, headers, body). Header names are case-insensitive, as on the wire."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def cache_status(self) -> str:
        return self.headers.get("Cache-Status", "")


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> Answer:
    async with http.get(url, **kw) as r:
        return Answer(r.status, CIMultiDict(r.headers), await r.read())


async def load(http: aiohttp.ClientSession, url: str, paths: list[str], concurrency: int = 10) -> list[int]:
    """Every path once, `concurrency` at a time; the statuses the clients got (0: the connection failed)."""
    queue, statuses = list(paths), []

    async def worker() -> None:
        while queue:
            path = queue.pop()
            try:
                statuses.append((await get(http, url + path)).status)
            except aiohttp.ClientError:
                statuses.append(0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses
