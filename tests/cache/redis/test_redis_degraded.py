"""Redis failing is not an error: down at start, killed mid-load, slow, or refusing our password."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.app import Sidecar
from proxy.cache.redis.client import redact
from proxy.config.rules import RuleSet
from proxy.config.settings import Config, RedisConfig, load_config
from proxy.config.units import Duration
from proxy.errors import ConfigError
from tests.support.client import get
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.processes import free_port
from tests.support.redis_tier import RULES, with_redis
from tests.support.upstream import Upstream
from tests.support.waiting import until


def state_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(": ", 1)[1].split(" ")[0] for r in caplog.records if "redis tier" in r.getMessage()
            and ("unavailable" in r.getMessage() or "back up" in r.getMessage())]


async def test_redis_down_at_start_every_request_succeeds_and_says_so(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecache")
    proxy = await make_proxy(RULES, config=with_redis(f"redis://127.0.0.1:{free_port()}/0"))
    results = [await get(http, proxy.proxy_url + f"/players/p{i % 5}") for i in range(20)]
    assert {r.status for r in results} == {200}
    assert all(r.cache_status.endswith("; detail=redis-unavailable") for r in results)
    assert [r.cache_status.split(";")[1].strip() for r in results[:5]] == ["fwd=miss"] * 5
    assert [r.cache_status.split(";")[1].strip() for r in results[5:]] == ["hit"] * 15  # memory still serves
    assert upstream.hits["/players/p0"] == 1
    async with http.get(proxy.admin_url + "/readyz") as r:
        ready = await r.json()
    assert r.status == 200 and ready["status"] == "ready" and ready["redis"]["status"] == "down"
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert "sidecache_redis_up 0.0" in text
    assert 'sidecache_redis_errors_total{error="ConnectionError"} ' in text
    assert state_changes(caplog) == ["unavailable"]  # once, not once per request


async def test_redis_killed_mid_load_fails_no_request_and_comes_back_by_itself(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_factory: RedisFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecache")
    server = redis_factory()
    proxy = await make_proxy(RULES, config=with_redis(server.url()))
    done: list[tuple[int, str]] = []
    queue = [f"/players/p{i % 100}" for i in range(200)]  # misses after the kill too: they are what ask Redis

    async def client() -> None:
        while queue:
            answer = await get(http, proxy.proxy_url + queue.pop())
            done.append((answer.status, answer.cache_status))
            if len(done) == 60:
                server.kill()

    await asyncio.gather(*(client() for _ in range(20)))
    assert len(done) == 200 and {s for s, _ in done} == {200}
    assert "redis-unavailable" in done[-1][1]
    server.start()  # same port, empty
    client_ = aioredis.from_url(server.url())
    try:
        async def entry_appears() -> bool:
            await get(http, proxy.proxy_url + f"/teams/t{time.monotonic_ns()}")
            return bool(await client_.keys("sidecache:v1:entry:*"))

        await until(entry_appears, timeout=3.0)  # back to two tiers without anyone's help
    finally:
        await client_.aclose()
    cache_status = (await get(http, proxy.proxy_url + "/players/p1")).cache_status
    assert "redis-unavailable" not in cache_status
    assert state_changes(caplog) == ["unavailable", "back"]


async def test_slow_redis_delays_no_request_beyond_the_timeout(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    proxy = await make_proxy(RULES, config=with_redis(server.url(), timeout=Duration.of("50ms")))  # the default
    await get(http, proxy.proxy_url + "/players/warm")
    admin = aioredis.from_url(server.url())
    try:
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # every other client waits 1.5 s
        took = []
        for i in range(20):
            t0 = time.perf_counter()
            answer = await get(http, proxy.proxy_url + f"/players/slow{i % 4}")
            status, cache_status = answer.status, answer.cache_status
            took.append(time.perf_counter() - t0)
            assert status == 200
        assert max(took) < 0.05 + 0.1  # the 50 ms timeout, plus the request itself and a loaded CI core
        assert "detail=redis-unavailable" in cache_status
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


async def test_the_password_is_never_printed(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, redis_factory: RedisFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_factory("--requirepass", "right-pw-7f3a")
    good = await make_proxy(RULES, config=with_redis(server.url(password="right-pw-7f3a")))
    await get(http, good.proxy_url + "/players/judge")
    assert good.tiers.redis is not None and good.tiers.redis.status == "up"
    bad = await make_proxy(RULES, config=with_redis(server.url(password="wrong-pw-91c2")))
    answer = await get(http, bad.proxy_url + "/players/judge")
    status, cache_status = answer.status, answer.cache_status
    assert status == 200 and "redis-unavailable" in cache_status
    async with http.get(bad.admin_url + "/readyz") as r:
        text = await r.text()
    assert bad.tiers.redis is not None
    shown = text + caplog.text + bad.tiers.redis.last_error + repr(bad.tiers.redis.errors)
    assert "wrong-pw-91c2" not in shown and "right-pw-7f3a" not in shown + good.tiers.redis.url
    assert f"redis://:***@127.0.0.1:{server.port}/0" in text
    assert "AuthenticationError" in bad.tiers.redis.last_error or "WRONGPASS" in bad.tiers.redis.last_error


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p%40ss@h:6379/2", "redis://:***@h:6379/2"),
        ("redis://user:pass@h/0", "redis://user:***@h/0"),
        ("rediss://h:6380", "rediss://h:6380"),
        ("unix:///run/redis.sock?db=3&password=xyz", "unix:///run/redis.sock?db=3&password=***"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redis_config_errors_never_echo_the_url(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[redis]\nurl = "http://:hunter2@cache:6379"\nprobe_min = "2s"\nprobe_max = "1s"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "hunter2" not in str(info.value)
    assert "`url` must start with redis://, rediss:// or unix://" in str(info.value)
    path.write_text('[redis]\nurl = "redis://:hunter2@cache:6379/two"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "hunter2" not in str(info.value) and "a database number such as /1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Sidecar(Config(redis=RedisConfig(url="redis://:hunter2@cache:port/0")), RuleSet())
    assert "hunter2" not in str(info.value) and "redis.url: redis://:***@cache:port/0" in str(info.value)
