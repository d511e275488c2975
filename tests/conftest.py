"""Real parts only: an aiohttp upstream on 127.0.0.1 that records what it receives, the proxy in front, and
redis-servers of our own; the helpers behind these fixtures are in tests/support/."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from proxy.app import Sidecar
from proxy.config.rules import RuleSet, load_rules
from proxy.config.settings import Config, apply_overrides
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.processes import REDIS_CLI, REDIS_SERVER, RedisClusterServers, RedisSentinelSet, RedisServer
from tests.support.upstream import Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    server = TestServer(up.app(), host="127.0.0.1")
    await server.start_server()
    up.server = server
    yield up
    await server.close()


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
