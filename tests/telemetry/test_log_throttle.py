"""One WARNING per route and kind of failure per interval, with the count of the lines held back."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from proxy.telemetry.log_throttle import LogThrottle
from tests.support.factories import ProxyFactory


def test_lines_within_the_interval_are_counted_and_reported_with_the_next(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "throttled")
    now = [100.0]
    throttle = LogThrottle(logging.getLogger("throttled"), interval=10.0, clock=lambda: now[0])
    written = []
    for step, key in [(0, "a"), (1, "a"), (1, "b"), (1, "a"), (8, "a"), (0, "b")]:
        now[0] += step
        written.append(throttle.warning(key, "failed: %s", key))
    assert written == [True, False, True, False, True, False]
    assert [r.getMessage() for r in caplog.records] == [
        "failed: a", "failed: b", "failed: a (2 more like it in the last 11s)"]


async def test_a_dead_upstream_under_load_writes_one_warning_per_route_and_kind(
    make_proxy: ProxyFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "sidecache")
    proxy = await make_proxy(upstream_url="http://127.0.0.1:1")
    for i in range(20):
        async with http.get(proxy.proxy_url + f"/down/{i}") as r:
            assert r.status == 502
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("route -:")]
    assert len(lines) == 1 and "cannot reach upstream http://127.0.0.1:1" in lines[0]
