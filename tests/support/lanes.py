"""Both hit paths for a test module: every test that starts a proxy with `make_proxy` runs twice, with the hit
fast lane on (the default) and with aiohttp answering every request (`[server] fast_lane = false`), so both keep
every guarantee (issue 17). A module imports `lane` and `make_proxy` from here (tests/serving's conftest does,
for the whole folder); a module about the fast lane itself, or too slow to run twice, imports `fast_lane_only`."""

from __future__ import annotations

import msgspec
import pytest

from proxy.app import Sidecar
from proxy.config.settings import Config
from tests.support.factories import ProxyFactory


@pytest.fixture(params=["fast-lane", "aiohttp-only"])
def lane(request: pytest.FixtureRequest) -> str:
    """Which path answers hits."""
    return str(request.param)


@pytest.fixture(name="lane")
def fast_lane_only() -> str:
    """`lane` pinned to the fast lane, for the module that imports this."""
    return "fast-lane"


# A route that echoes each caller's `prop_id` into one stored body (rules.md, `echo`).
ECHO_RULES = """
[[route]]
name = "prop"
match = "GET /props/{prop_id}"
ttl = "5m"
key = ["query.player"]
echo = ["prop_id"]
"""
# The one ruled route the fast lane's own tests answer.
PLAYER_RULES = """
[[route]]
name = "player"
match = "GET /api/player/{id}"
ttl = "60s"
"""


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
