"""Fixtures of the serving tests. Every test here that starts a proxy with `make_proxy` runs twice: with the hit
fast lane on (the default) and with aiohttp answering every request, so both paths keep every guarantee (issue 17;
the fixtures are tests/support/lanes.py).
The batching tests also get the sample backend on a loopback port, and a client whose bursts reach the proxy at
once. (Modules with a backend of their own define their own fixture.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.devtools.sample_backend import SampleBackend
from tests.support.batching import Backend
from tests.support.lanes import lane, make_proxy  # noqa: F401 - fixtures, for every module of this folder


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
