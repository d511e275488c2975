"""The `sidecache` command as a user runs it: check, and serve refusing to start on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .processes import ROOT, free_port


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_check_accepts_the_shipped_files() -> None:
    r = run("check", "--config", "config/sidecache.toml", "--rules", "rules")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok: 7 rules; upstream http://127.0.0.1:8000\n"


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
