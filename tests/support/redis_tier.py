"""What the Redis tests share: the rules they run, a Redis config fast enough for a test, where an entry or lease
lives in Redis, the tier's state changes as the log tells them, and `sidecache serve` processes listening on the
events channel."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
import redis.asyncio as aioredis
from multidict import MultiDict

from proxy.app import Sidecar
from proxy.config.settings import Config, RedisConfig
from proxy.config.units import Duration
from proxy.policy.keys import cache_key

from .processes import ServeProcess
from .waiting import until

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
stale_while_revalidate = "30s"
stale_if_error = "10m"
tags = ["player:{name}"]

[[route]]
name = "team"
match = "GET /teams/{team}"
ttl = "1m"
"""


def with_redis(url: str, **fields: object) -> Config:
    """Redis config with probes fast enough for tests, and a call timeout a busy CI core cannot miss by accident
    (tests of the timeout itself set it)."""
    probes: dict[str, object] = {"probe_min": Duration.of("50ms"), "probe_max": Duration.of("200ms"),
                                 "timeout": Duration.of("250ms")}
    return Config(redis=RedisConfig(url=url, **{**probes, **fields}))  # type: ignore[arg-type]


def h(key: str) -> str:
    """The hash a cache key is stored under in Redis (`sidecache:v1:entry:<h>`, `...:lease:<h>`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def cache_key_of(proxy: Sidecar, path: str) -> str:
    """The cache key the proxy's rules give a plain GET of `path`."""
    matched = proxy.rules.match("GET", path)
    assert matched is not None
    return cache_key(matched[0], matched[1], MultiDict(), {})


async def holds(redis: aioredis.Redis, pattern: str, n: int) -> bool:
    """Redis holds exactly n keys matching `pattern`."""
    return len(await redis.keys(pattern)) == n


def state_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The Redis tier's 'unavailable' and 'back up' log lines, in order, as their first word after the colon."""
    return [r.getMessage().split(": ", 1)[1].split(" ")[0] for r in caplog.records if "redis tier" in r.getMessage()
            and ("unavailable" in r.getMessage() or "back up" in r.getMessage())]


async def subscribed(http: aiohttp.ClientSession, *procs: ServeProcess, timeout: float = 5.0) -> None:
    """Wait until each process listens on the events channel, so no event a test sends is missed."""
    async def all_subscribed() -> bool:
        for p in procs:
            async with http.get(p.admin_url + "/readyz") as r:
                if not (await r.json())["redis"].get("subscribed"):
                    return False
        return True

    await until(all_subscribed, timeout=timeout)
