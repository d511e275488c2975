"""The access log: one JSON line per request when switched on (flag or config), nothing at all when off."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import msgspec
import pytest

from proxy.config.settings import Config, ListenConfig
from tests.support.factories import ProxyFactory
from tests.support.processes import serve
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""


def json_lines(text: str) -> list[dict[str, object]]:
    return [msgspec.json.decode(line) for line in text.splitlines() if line.startswith("{")]


async def test_access_log_flag_writes_one_json_line_per_request(upstream: Upstream, tmp_path: Path) -> None:
    upstream.reply("/players/slow", delay=0.05)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    with serve("--access-log", "--rules", str(rules), "--upstream", upstream.url) as sp:
        async with aiohttp.ClientSession() as http:
            for path in ("/players/slow", "/players/slow?x=1", "/players/slow", "/players/a"):
                async with http.get(sp.proxy_url + path) as r:
                    await r.read()
        os.kill(sp.pid, signal.SIGTERM)
        out = sp.proc.communicate(timeout=10)[0].decode()
    lines = json_lines(out)
    assert [(x["method"], x["path"], x["route"], x["status"]) for x in lines] == [
        ("GET", "/players/slow", "player", 200), ("GET", "/players/slow?x=1", "player", 200),
        ("GET", "/players/slow", "player", 200), ("GET", "/players/a", "player", 200),
    ]
    miss, _, hit, _ = lines
    assert miss["cache"] == "sidecache; fwd=miss; fwd-status=200; stored" and hit["cache"].startswith("sidecache; hit")
    assert isinstance(miss["upstream_ms"], float) and miss["upstream_ms"] >= 50
    assert miss["total_ms"] >= miss["upstream_ms"]  # type: ignore[operator]
    assert "upstream_ms" not in hit and hit["total_ms"] < 50  # type: ignore[operator]
    assert miss["bytes"] == hit["bytes"] > 0 and set(miss) == {
        "ts", "method", "path", "route", "cache", "status", "bytes", "total_ms", "upstream_ms"}


async def test_access_log_config_field_covers_upstream_errors(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    proxy = await make_proxy(RULES, config=Config(server=ListenConfig(access_log=True)),
                             upstream_url="http://127.0.0.1:1")
    async with http.get(proxy.proxy_url + "/players/a") as r:
        assert r.status == 502
    [line] = json_lines(capfd.readouterr().out)
    assert (line["route"], line["status"], line["cache"]) == (
        "player", 502, "sidecache; fwd=miss; detail=upstream-unavailable")


async def test_access_log_is_off_by_default(make_proxy: ProxyFactory, http: aiohttp.ClientSession,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    proxy = await make_proxy(RULES)
    assert proxy.handler is not None and proxy.handler.access_log is None  # one `is not None` test per request
    for _ in range(3):
        async with http.get(proxy.proxy_url + "/players/a") as r:
            await r.read()
    assert json_lines(capfd.readouterr().out) == []


async def test_bytes_is_the_body_sent_for_every_outcome(make_proxy: ProxyFactory, upstream: Upstream,
                                                        http: aiohttp.ClientSession,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A relayed answer used to count its status line and headers too; a HEAD counted the body it never sent."""
    body = b'{"x": "' + b"a" * 5000 + b'"}'
    upstream.reply("/players/a", body=body)
    upstream.reply("/free", body=body)
    proxy = await make_proxy(RULES, config=Config(server=ListenConfig(access_log=True)))
    for method, path in (("GET", "/players/a"), ("GET", "/players/a"), ("HEAD", "/players/a"), ("GET", "/free"),
                         ("POST", "/free")):
        async with http.request(method, proxy.proxy_url + path, headers={"Accept-Encoding": "identity"}) as r:
            got = await r.read()
            assert len(got) == (0 if method == "HEAD" else len(body))
    lines: list[dict[str, object]] = []
    for _ in range(200):  # a relayed answer is logged once the proxy is done with it, which may be after the client
        lines += json_lines(capfd.readouterr().out)
        if len(lines) >= 5:
            break
        await asyncio.sleep(0.01)
    assert [(x["method"], x["cache"].split(";")[1].strip(), x["bytes"]) for x in lines] == [  # type: ignore[union-attr]
        ("GET", "fwd=miss", len(body)), ("GET", "hit", len(body)), ("HEAD", "hit", 0),
        ("GET", "fwd=miss", len(body)), ("POST", "fwd=bypass", len(body)),
    ]
    assert all(isinstance(x["ts"], str) and x["ts"].endswith("Z") for x in lines)  # type: ignore[union-attr]
