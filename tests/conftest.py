"""Real parts only: an aiohttp upstream on 127.0.0.1 that records what it receives, and the proxy in front."""

from __future__ import annotations

import asyncio
import collections
import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from proxy.app import Sidecar
from proxy.config.rules import RuleSet, load_rules
from proxy.config.settings import Config, apply_overrides

from .processes import REDIS_CLI, REDIS_SERVER, RedisClusterServers, RedisSentinelSet, RedisServer


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


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    up.server = server
    yield up
    await server.close()


ProxyFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_proxy(tmp_path: Path, upstream: Upstream) -> AsyncIterator[ProxyFactory]:
    """Start a Sidecar on loopback ports in front of `upstream` with rules written as TOML text."""
    started: list[Sidecar] = []

    async def make(rules: str = "", *, config: Config | None = None, upstream_url: str | None = None,
                   **kw: object) -> Sidecar:
        ruleset = RuleSet()
        if rules:
            path = tmp_path / f"rules{len(started)}.toml"
            path.write_text(textwrap.dedent(rules))
            ruleset = load_rules(path)
        cfg = apply_overrides(config or Config(), upstream=upstream_url or upstream.url, listen="127.0.0.1:0",
                              admin="127.0.0.1:0", env={})
        sidecar = Sidecar(cfg, ruleset, **kw)  # type: ignore[arg-type]
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield make
    for s in started:
        await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client, as a browser would be: no cookies kept, no decompression surprises."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def _need_redis_server() -> None:
    """A laptop without redis-server skips the Redis tests; CI must have it, so there it is a failure."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed, and CI=true: install it (`.ci/run` does)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session on a free loopback port, no persistence; stopped by PID at the end."""
    _need_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:<port>/1 of the session server, flushed before the test."""
    url = redis_server.url(db=1)
    client = aioredis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of our own, to assert what Redis holds (redis-py style: one per test, closed after)."""
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Start private redis-servers (extra args allowed) for tests that kill, pause or restart one."""
    _need_redis_server()
    started: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        directory = tmp_path / f"redis{len(started)}"
        directory.mkdir()
        server = RedisServer(directory, *extra)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real Redis Cluster (3 primaries, a replica each) for one test module; its nodes stopped by PID after.

    A test that fails a node over either leaves the cluster settled again or runs last in its module."""
    _need_redis_server()
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelSet]:
    """A real Sentinel set (a primary, a replica, three sentinels) for one test module; stopped by PID after."""
    _need_redis_server()
    sentinels = RedisSentinelSet(tmp_path_factory.mktemp("sentinel"))
    sentinels.start()
    yield sentinels
    sentinels.stop()
