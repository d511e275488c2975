"""Fixtures of the serving tests. Every test here that starts a proxy with `make_proxy` runs twice: with the hit
fast lane on (the default) and with aiohttp answering every request, so both paths keep every guarantee (issue 17).
The batching tests also get the sample backend on a loopback port, and a client whose bursts reach the proxy at
once. (Modules with a backend of their own define their own fixture.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import Sidecar
from proxy.config.settings import Config
from proxy.devtools.sample_backend import SampleBackend
from tests.support.batching import Backend
from tests.support.factories import ProxyFactory


@pytest.fixture(params=["fast-lane", "aiohttp-only"])
def lane(request: pytest.FixtureRequest) -> str:
    """Which path answers hits: a module that tests one of them pins this fixture."""
    return str(request.param)


@pytest.fixture
def make_proxy(make_proxy: ProxyFactory, lane: str) -> ProxyFactory:
    """The root `make_proxy`, with `[server] fast_lane = false` in the aiohttp-only run."""
    if lane == "fast-lane":
        return make_proxy

    async def make(rules: str = "", *, config: Config | None = None, **kw: object) -> Sidecar:
        cfg = config or Config()
        cfg = msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, fast_lane=False))
        return await make_proxy(rules, config=cfg, **kw)

    return make


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend(SampleBackend(latency=0.01))
    app = b.sample.app()
    app.middlewares.insert(0, b.gauge)  # outermost: the gauge counts the backend's latency too
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    b.url = str(server.make_url("")).rstrip("/")
    yield b
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """Unlimited connections, so a burst reaches the proxy at once rather than 100 at a time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session
