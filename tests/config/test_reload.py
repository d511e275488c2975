"""POST /rules/reload and SIGHUP: config and rules read again, all or nothing; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.app import Sidecar
from proxy.config.reload import LIVE, Overrides, Sources, live_config
from proxy.config.settings import Config
from tests.support.factories import ProxyFactory
from tests.support.processes import serve
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""
MORE = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "10m"

[[route]]
name = "team"
match = "GET /teams/{team}"
ttl = "5m"
"""
BROKEN = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
colour = "red"
"""


async def reloadable(make_proxy: ProxyFactory, upstream: Upstream, tmp_path: Path,
                     text: str) -> tuple[Path, Path, Sidecar]:
    """A proxy started from a rules file and an (empty) config file, so a reload reads them again."""
    rules, conf = tmp_path / "rules.toml", tmp_path / "sidecache.toml"
    rules.write_text(text)
    conf.write_text("")
    sources = Sources(config=conf, rules=[rules], env={},
                      overrides=Overrides(upstream=upstream.url, listen="127.0.0.1:0", admin="127.0.0.1:0"))
    return rules, conf, await make_proxy(text, sources=sources)


async def rules_of(http: aiohttp.ClientSession, admin: str) -> list[tuple[str, str]]:
    async with http.get(admin + "/rules") as r:
        return [(x["name"], x["ttl"]) for x in (await r.json())["rules"]]


async def status_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        await r.read()
        return r.headers["Cache-Status"]


async def test_reload_applies_rules_and_live_config_and_names_the_rest(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rules, conf, proxy = await reloadable(make_proxy, upstream, tmp_path, RULES)
    assert (await status_of(http, proxy.proxy_url + "/players/a")).endswith("stored")
    rules.write_text(MORE)
    conf.write_text('[memory]\nmax_entries = 100\n[server]\naccess_log = true\n[upstream]\nread_timeout = "10s"\n')
    async with http.post(proxy.admin_url + "/rules/reload") as r:
        assert r.status == 200
        assert await r.json() == {
            "reloaded": True, "rules": 2,
            "applied": ["server.access_log: False -> True", "memory.max_entries: 500 -> 100"],
            "restart_required": ["upstream.read_timeout: '30s' -> '10s' needs a restart"],
        }
    assert await rules_of(http, proxy.admin_url) == [("player", "10m"), ("team", "5m")]
    assert (await status_of(http, proxy.proxy_url + "/teams/nyy")).endswith("stored")
    assert (await status_of(http, proxy.proxy_url + "/players/a")).startswith("sidecache; hit")  # entries kept
    assert proxy.memory.max_entries == 100 and proxy.config.upstream.read_timeout == 30
    assert proxy.handler is not None and proxy.handler.access_log is not None


async def test_a_broken_file_is_rejected_and_the_old_rules_stay(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rules, conf, proxy = await reloadable(make_proxy, upstream, tmp_path, RULES)
    await status_of(http, proxy.proxy_url + "/players/a")
    rules.write_text(BROKEN)
    conf.write_text("[memory]\nmax_entries = 0\n")
    async with http.post(proxy.admin_url + "/rules/reload") as r:
        assert r.status == 422
        body = await r.json()
    assert body["error"] == "invalid_config"
    assert body["message"] == "nothing was reloaded; the 1 rules loaded before stay in force"
    assert body["problems"] == [
        f"{conf}: Expected `int` >= 1 - at `$.memory.max_entries`",
        "invalid rules:",
        f"  {rules}: Object contains unknown field `colour` - at `$.route[0]`",
    ]
    assert await rules_of(http, proxy.admin_url) == [("player", "5m")]
    assert (await status_of(http, proxy.proxy_url + "/players/a")).startswith("sidecache; hit")
    assert proxy.memory.max_entries == 500
    async with http.get(proxy.admin_url + "/stats") as r:
        assert (await r.json())["reloads"] == {"rejected": 1}


async def test_reload_without_files_says_so(make_proxy: ProxyFactory, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES)
    async with http.post(proxy.admin_url + "/rules/reload") as r:
        assert r.status == 422
        assert (await r.json())["problems"] == ["this sidecache was started without files to reload"]


@pytest.mark.parametrize(("field", "value", "live"), [
    ("memory", {"max_bytes": "1MiB"}, True),
    ("server", {"access_log": True}, True),
    ("server", {"listen": "127.0.0.1:9000"}, False),
    ("server", {"workers": 4}, False),
    ("upstream", {"url": "http://127.0.0.1:9"}, False),
    ("redis", {"url": "redis://127.0.0.1:6379/0"}, False),
])
def test_which_config_changes_apply_live(field: str, value: dict[str, object], live: bool) -> None:
    import msgspec

    from proxy.config.units import dec_hook

    new = msgspec.convert({field: value}, type=Config, dec_hook=dec_hook)
    running, applied, waiting = live_config(Config(), new)
    assert (len(applied), len(waiting)) == ((1, 0) if live else (0, 1))
    assert (running == new) is live and (running == Config()) is not live
    assert all(k.split(".")[0] in ("server", "memory") for k in LIVE)


async def test_sighup_reloads_a_running_process_and_keeps_the_old_rules_on_error(
    upstream: Upstream, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    with serve("--rules", str(rules), "--upstream", upstream.url) as sp:
        async with aiohttp.ClientSession() as http:
            rules.write_text(MORE)
            os.kill(sp.pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while len(await rules_of(http, sp.admin_url)) != 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            rules.write_text(BROKEN)
            os.kill(sp.pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while True:
                async with http.get(sp.admin_url + "/stats") as r:
                    if (await r.json())["reloads"] == {"ok": 1, "rejected": 1}:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await rules_of(http, sp.admin_url) == [("player", "10m"), ("team", "5m")]
            assert sp.proc.poll() is None
        os.kill(sp.pid, signal.SIGTERM)
        out = sp.proc.communicate(timeout=10)[0].decode()
    assert "worker 0: reloaded 2 rules" in out
    assert "worker 0: reload rejected, the old config and rules stay in force:" in out
    assert "Object contains unknown field `colour` - at `$.route[0]`" in out


BATCHED = """
[[route]]
name = "prop"
match = "GET /mlb/enhanced-prop-analysis/{prop_id}"
ttl = "5m"
key = ["query.player_name", "query.stat_type", "query.line", "query.team", "query.matchup"]
echo = ["prop_id"]
share = "all-users"
  [route.batch]
  to = "POST /api/v1/optimized/batch-prop-analysis"
  group_by = "query.player_name"
  window = "30ms"
  linger = "0s"  # a lone item still makes a batch call, which shows the batch route exists
  item = { prop_id = "path.prop_id", player_name = "query.player_name", stat_type = "query.stat_type", \
line = "query.line:float", team = "query.team", matchup = "query.matchup" }
  body = { requests = "$items" }
"""
UNBATCHED = BATCHED[: BATCHED.index("  [route.batch]")]


async def test_reload_builds_the_batching_its_rules_declare(make_proxy: ProxyFactory, upstream: Upstream,
                                                            http: aiohttp.ClientSession, tmp_path: Path) -> None:
    rules, conf, proxy = await reloadable(make_proxy, upstream, tmp_path, UNBATCHED)
    q = "player_name=A&stat_type=hits&line=1.5&team=NYY&matchup=NYY+vs+BOS"
    assert "batched" not in await status_of(http, proxy.proxy_url + f"/mlb/enhanced-prop-analysis/1?{q}")
    rules.write_text(BATCHED)
    async with http.post(proxy.admin_url + "/rules/reload") as r:
        assert r.status == 200
    status = await status_of(http, proxy.proxy_url + f"/mlb/enhanced-prop-analysis/2?{q.replace('1.5', '2.5')}")
    assert "batch" in status  # went through the batch route built on reload (batched, or fell back alone)
    assert upstream.hits["/api/v1/optimized/batch-prop-analysis"] == 1
