"""The test origin: an aiohttp app on 127.0.0.1 that answers as each test programs it and records what it got."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict


@dataclass
class Reply:
    """What the test upstream answers on one path."""

    status: int = 200
    body: bytes | None = None  # None: a JSON echo of the request
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    vary_on: str | None = None  # a request header whose value is echoed into the body (to tell variants apart)
    lines: list[tuple[str, str]] = field(default_factory=list)  # more header lines, names repeated as they come


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


class Upstream:
    """A programmable origin: per-path replies, a count of every request, and what each one carried."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self.hits: collections.Counter[str] = collections.Counter()
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def reply(self, path: str, **kw: object) -> None:
        self.replies[path] = Reply(**kw)  # type: ignore[arg-type]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits[request.path] += 1
        self.seen.append(Seen(request.method, request.path, request.raw_path, dict(request.headers), body))
        r = self.replies.get(request.path, Reply())
        if r.delay:
            await asyncio.sleep(r.delay)
        etag = r.headers.get("ETag")
        if etag is not None and request.headers.get("If-None-Match") == etag:  # a real origin's 304
            return web.Response(status=304, headers={k: v for k, v in r.headers.items() if k != "Content-Type"})
        payload = r.body
        if r.vary_on is not None:
            payload = msgspec.json.encode({r.vary_on: request.headers.get(r.vary_on, "")})
        if payload is None:
            payload = msgspec.json.encode(
                {"method": request.method, "path": request.path, "raw_path": request.raw_path,
                 "n": self.hits[request.path], "body_len": len(body)}
            )
        headers = CIMultiDict({"Content-Type": "application/json", **r.headers})
        headers.extend(r.lines)
        return web.Response(status=r.status, body=payload, headers=headers)
