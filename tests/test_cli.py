"""The `sidecache` command as a user runs it: check, and serve refusing to start on bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import ROOT, answers, free_port, run, serve
from tests.support.waiting import wait_for


def test_check_accepts_the_shipped_files() -> None:
    r = run("check", "--config", "config/sidecache.toml", "--rules", "rules")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "rules: 7 from rules/a1betting.toml\nok: 7 rules; upstream http://127.0.0.1:8000\n"


def test_check_reports_config_and_rules_problems_together_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[memory]\nmax_entries = -1\n")
    (tmp_path / "r.toml").write_text('[[route]]\nname = "a"\nmatch = "GET /a"\nttl = "soon"\n')
    r = run("check", "--config", str(tmp_path / "c.toml"), "--rules", str(tmp_path / "r.toml"))
    assert r.returncode == 2
    assert r.stderr == (
        "sidecache: configuration error, invalid:\n"
        f"{tmp_path}/c.toml: Expected `int` >= 1 - at `$.memory.max_entries`\n"
        "invalid rules:\n"
        f"  {tmp_path}/r.toml: Expected a duration such as \"200ms\", \"30s\", \"5m\", \"24h\", got 'soon' "
        "- at `$.route[0].ttl`\n"
    )


def test_serve_refuses_to_start_on_a_bad_rules_file(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text('[[route]]\nname = "a"\nmatch = "GET /a"\nttl = "1m"\ncolour = "red"\n')
    r = run("serve", "--rules", str(tmp_path / "r.toml"), "--listen", f"127.0.0.1:{free_port()}",
            "--admin", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.endswith(
        f"refusing to start:\ninvalid rules:\n  {tmp_path}/r.toml: Object contains unknown field `colour` "
        "- at `$.route[0]`\n"
    )


def test_serve_refuses_a_public_admin_listener_without_a_token() -> None:
    r = run("serve", "--admin", f"0.0.0.0:{free_port()}", "--listen", f"127.0.0.1:{free_port()}",
            env={"SIDECACHE_ADMIN_TOKEN": ""})
    assert r.returncode == 2
    assert "server.admin: the admin listener binds 0.0.0.0:" in r.stderr
    assert "SIDECACHE_ADMIN_TOKEN is not set" in r.stderr


def test_serve_refuses_a_bad_upstream_flag() -> None:
    r = run("serve", "--upstream", "localhost:8000", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "command line or environment: `url` must be an http:// or https:// URL with a host" in r.stderr


def test_version_prints_the_package_version() -> None:
    from proxy import __version__

    r = run("--version")
    assert (r.returncode, r.stdout) == (0, f"sidecache {__version__}\n")


def test_check_says_plainly_when_the_bundled_a1betting_rules_apply(tmp_path: Path) -> None:
    r = run("check", cwd=tmp_path)  # a folder without ./rules, as a new user's own project
    assert r.returncode == 0, r.stderr
    bundled = ROOT / "proxy" / "defaults" / "a1betting.toml"
    assert r.stdout == (
        f"rules: 7 bundled A1Betting rules from {bundled} (no ./rules folder and no --rules); they fit the "
        "A1Betting backend only: write your own in ./rules or pass --rules FILE\n"
        "ok: 7 rules; upstream http://127.0.0.1:8000\n"
    )


SHADOWED = """
[[route]]
name = "teams"
match = "GET /api/teams/{id}"
ttl = "1m"

[[route]]
name = "yankees"
match = "GET /api/teams/nyy"
ttl = "5m"
"""


def test_check_and_serve_name_the_rules_files_and_warn_of_shadowed_rules(tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text(SHADOWED)
    warning = (f"{rules}: rule 'yankees' at `$.route[1].match`: 'GET /api/teams/nyy' is never reached: rule 'teams' "
               f"('GET /api/teams/{{id}}', in {rules}) comes first and matches every request it does; move this rule "
               "above it or narrow that pattern")
    r = run("check", "--rules", str(rules))
    assert r.stdout == f"rules: 2 from {rules}\nwarning: {warning}\nok: 2 rules; upstream http://127.0.0.1:8000\n"
    with serve("--rules", str(rules)) as sp:
        os.kill(sp.pid, signal.SIGTERM)
        out = sp.proc.communicate(timeout=10)[0].decode()
    assert f"INFO sidecache: rules: 2 from {rules}\n" in out
    assert f"WARNING sidecache: {warning}\n" in out


def test_log_format_json_puts_both_logs_in_json_lines_and_names_the_bundled_rules(tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--log-format", "json", "--access-log", "--upstream",
         "http://127.0.0.1:1", "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # a folder without ./rules
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{admin}/healthz"), "sidecache serve to answer /healthz")
        with pytest.raises(urllib.error.HTTPError) as info:  # 502: nothing listens upstream
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/x", timeout=5)
        info.value.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    app = [json.loads(line) for line in err.decode().splitlines()]
    assert app and all(set(x) >= {"ts", "level", "logger", "msg"} and rfc3339.match(x["ts"]) for x in app)
    assert any(x["level"] == "info" and x["msg"].startswith("rules: 7 bundled A1Betting rules from ") and
               "they fit the A1Betting backend only" in x["msg"] for x in app)  # serve says it as check does
    [access] = [json.loads(line) for line in out.decode().splitlines()]
    assert rfc3339.match(access["ts"]) and (access["path"], access["status"]) == ("/x", 502)


def test_log_level_warning_hides_the_info_lines(tmp_path: Path) -> None:
    with serve("--log-level", "warning") as sp:
        os.kill(sp.pid, signal.SIGTERM)
        out = sp.proc.communicate(timeout=10)[0].decode()
    assert "INFO" not in out


def test_a_rejected_reload_is_logged_in_one_line_however_it_was_asked(tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text(SHADOWED)
    with serve("--rules", str(rules)) as sp:
        rules.write_text('[[route]]\nname = "a"\nmatch = "GET /a"\nttl = "soon"\n')
        req = urllib.request.Request(sp.admin_url + "/rules/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 422
        info.value.close()
        os.kill(sp.pid, signal.SIGHUP)
        wait_for(lambda: reloads(sp.admin_url) == {"rejected": 2}, "both rejected reloads", timeout=10)
        os.kill(sp.pid, signal.SIGTERM)
        out = sp.proc.communicate(timeout=10)[0].decode()
    rejected = [line for line in out.splitlines() if "reload rejected" in line]
    problem = (f"invalid rules:; {rules}: Expected a duration such as \"200ms\", \"30s\", \"5m\", \"24h\", got 'soon' "
               "- at `$.route[0].ttl`")
    assert [line.split(" ERROR ", 1)[1] for line in rejected] == [
        f"sidecache: worker 0: reload rejected, the old config and rules stay in force: {problem} (asked by {by})"
        for by in ("POST /rules/reload", "SIGHUP")
    ]


def reloads(admin_url: str) -> object:
    with urllib.request.urlopen(admin_url + "/stats", timeout=5) as r:
        return json.loads(r.read())["reloads"]

def test_serve_refuses_workers_without_redis_in_one_line() -> None:
    r = run("serve", "--workers", "2", "--listen", f"127.0.0.1:{free_port()}", "--admin",
            f"127.0.0.1:{free_port()}", env={"SIDECACHE_REDIS_URL": ""})
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "server.workers: 2 workers need a shared Redis ([redis] url or SIDECACHE_REDIS_URL): each would keep its "
        "own cache and miss the others' purges; set a Redis or run one worker")


def test_serve_takes_the_redis_mode_from_the_flag() -> None:
    r = run("serve", "--redis-mode", "sentinel", "--listen", f"127.0.0.1:{free_port()}", "--admin",
            f"127.0.0.1:{free_port()}", env={"SIDECACHE_REDIS_URL": "", "SIDECACHE_REDIS_MODE": ""})
    assert r.returncode == 2
    assert 'mode = "sentinel" needs `sentinels` (HOST:PORT of each) and `service`' in r.stderr
