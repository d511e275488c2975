"""Bad input at start-up: one line naming the address or field, exit 2; `check` sees what `serve` would run."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.processes import free_port, run


def test_a_port_in_use_is_one_line_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        f"sidecache: refusing to start: server.listen: cannot listen on 127.0.0.1:{port}: the address is already "
        "in use (another sidecache, or another listener of this one?)")
    assert "Traceback" not in r.stderr


def test_the_admin_listener_on_the_proxy_address_is_refused() -> None:
    port = free_port()
    r = run("serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert f"`admin` and `listen` are both 127.0.0.1:{port}: each listener needs its own port" in r.stderr


def test_a_host_that_does_not_resolve_is_one_line() -> None:
    r = run("serve", "--listen", "no-such-host.invalid:8080", "--admin", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("sidecache: refusing to start: server.listen: cannot listen on "
                                         "no-such-host.invalid:8080: the host name does not resolve")


def test_check_validates_the_flags_and_environment_serve_would_use(tmp_path: Path) -> None:
    r = run("check", env={"SIDECACHE_REDIS_URL": "http://cache:6379"})
    assert r.returncode == 2 and "`url` must start with redis://, rediss:// or unix://" in r.stderr
    r = run("check", env={"SIDECACHE_REDIS_URL": "redis://:hunter2@cache:port/0"})
    assert r.returncode == 2 and "redis.url: redis://:***@cache:port/0: " in r.stderr and "hunter2" not in r.stderr
    r = run("check", "--admin", "0.0.0.0:9901", env={"SIDECACHE_ADMIN_TOKEN": ""})
    assert r.returncode == 2 and "SIDECACHE_ADMIN_TOKEN is not set" in r.stderr
    r = run("check", "--upstream", "http://backend:8000", env={"SIDECACHE_REDIS_URL": "redis://127.0.0.1:1/2"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("upstream http://backend:8000\n")
