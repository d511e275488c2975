"""Config files: defaults, exact error text for each kind of mistake, and flag/env layering."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.settings import Config, apply_overrides, check_admin_exposure, check_workers, load_config
from proxy.config.units import Duration
from proxy.errors import ConfigError
from tests.support.processes import ROOT


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(str(path), "FILE")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[redis]\ntimeout = "fast"', 'FILE: Expected a duration such as "200ms", "30s", "5m", "24h", got \'fast\' '
                                      "- at `$.redis.timeout`"),
        ("[memory]\nmax_entries = 0", "FILE: Expected `int` >= 1 - at `$.memory.max_entries`"),
        ('[memory]\nmax_bytes = "lots"', "FILE: Expected a size in bytes such as 1048576, \"512KiB\" or \"64MiB\", "
                                         "got 'lots' - at `$.memory.max_bytes`"),
        ('[upstream]\nurl = "localhost:8000"', "FILE: `url` must be an http:// or https:// URL with a host, got "
                                               "'localhost:8000' - at `$.upstream`"),
        ('[upstream]\nurl = "http://u:pw@backend:8000"', "FILE: `url` must not carry user:password@ (the proxy "
                                                       "forwards each client's Authorization) - at `$.upstream`"),
        ('[server]\nlisten = "8080"', "FILE: `listen` must be HOST:PORT such as \"127.0.0.1:8080\", got '8080' "
                                      "- at `$.server`"),
        ("[server]\nworkerz = 2", "FILE: Object contains unknown field `workerz` - at `$.server`"),
        ('[defaults]\nunruled = "cache"', "FILE: Invalid enum value 'cache' - at `$.defaults.unruled`"),
        ('[upstream]\nread_timeout = "0s"', "FILE: `read_timeout` must be longer than 0s - at `$.upstream`"),
        ('[upstream]\nhealth_path = "health"', "FILE: `health_path` must start with /, got 'health' - at `$.upstream`"),
        ('[redis]\nlease = "999999999999d"', "FILE: Expected a duration of at most 365d, got '999999999999d' "
                                             "- at `$.redis.lease`"),
        ('[server]\nheader_timeout = "0s"', "FILE: `header_timeout` must be longer than 0s - at `$.server`"),
        ('[server]\nlisten = "127.0.0.1:8080"\nmetrics = "127.0.0.1:8080"',
         "FILE: `metrics` and `listen` are both 127.0.0.1:8080: each listener needs its own port - at `$.server`"),
    ],
)
def test_bad_config_names_file_field_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[upstream\n")
    assert message.startswith("FILE: ") and "line 1" in message  # the TOML parser's own wording varies by Python


def test_shipped_config_is_the_defaults_written_out() -> None:
    assert load_config(ROOT / "config" / "sidecache.toml") == Config()


def test_flags_beat_env_beat_file() -> None:
    cfg = apply_overrides(Config(), env={"SIDECACHE_UPSTREAM": "http://env:1", "SIDECACHE_REDIS_URL": "redis://e"})
    assert (cfg.upstream.url, cfg.redis.url) == ("http://env:1", "redis://e")
    cfg = apply_overrides(Config(), upstream="http://flag:2", redis="", env={"SIDECACHE_UPSTREAM": "http://env:1"})
    assert (cfg.upstream.url, cfg.redis.url) == ("http://flag:2", "")
    with pytest.raises(ConfigError, match=r"command line or environment: `listen` must be HOST:PORT"):
        apply_overrides(Config(), listen="nope", env={})


def test_public_admin_needs_a_token() -> None:
    public = apply_overrides(Config(), admin="0.0.0.0:9901", env={})
    assert check_admin_exposure(public, None) == [
        "server.admin: the admin listener binds 0.0.0.0:9901, which is not loopback, and SIDECACHE_ADMIN_TOKEN is "
        "not set; set a token or bind 127.0.0.1"
    ]
    assert check_admin_exposure(public, "s3cret") == []
    assert check_admin_exposure(Config(), None) == []


def test_five_mistakes_are_reported_in_one_run(tmp_path: Path) -> None:
    message = error_of(tmp_path, """
[server]
listen = "8080"

[upstream]
url = "localhost:8000"

[memory]
max_entries = 0

[redis]
timeout = "fast"

[metrics]
port = 9902
""")
    assert message.split("\n") == [
        "FILE: `listen` must be HOST:PORT such as \"127.0.0.1:8080\", got '8080' - at `$.server`",
        "FILE: `url` must be an http:// or https:// URL with a host, got 'localhost:8000' - at `$.upstream`",
        "FILE: Expected `int` >= 1 - at `$.memory.max_entries`",
        "FILE: Expected a duration such as \"200ms\", \"30s\", \"5m\", \"24h\", got 'fast' - at `$.redis.timeout`",
        "FILE: Object contains unknown field `metrics`",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1.5s", 1.5), ("90s", 90.0), ("1h30m", 5400.0), ("2d12h", 216000.0), ("1m 30s", 90.0)],
)
def test_durations_accept_compound_forms(text: str, seconds: float) -> None:
    assert float(Duration.parse(text)) == seconds and Duration.parse(text).text == text


@pytest.mark.parametrize("text", ["30m1h", "1m1m", "5q", "", "1h30", "h"])
def test_durations_refuse_out_of_order_repeated_or_unitless_parts(text: str) -> None:
    with pytest.raises(ValueError, match="Expected a duration such as"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[defaults]\ntargeted_cache_control = ["CDN Cache Control"]',
         "FILE: `targeted_cache_control` must list header field names other than Cache-Control, got "
         "'CDN Cache Control' - at `$.defaults`"),
        ('[defaults]\ntargeted_cache_control = ["cache-control"]',
         "FILE: `targeted_cache_control` must list header field names other than Cache-Control, got "
         "'cache-control' - at `$.defaults`"),
        ('[defaults]\ntargeted_cache_control = "CDN-Cache-Control"',
         "FILE: Expected `array`, got `str` - at `$.defaults.targeted_cache_control`"),
    ],
)
def test_bad_targeted_cache_control(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message


def test_targeted_cache_control_can_be_turned_off_or_reordered(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[defaults]\ntargeted_cache_control = []')
    assert load_config(path).defaults.targeted_cache_control == ()
    path.write_text('[defaults]\ntargeted_cache_control = ["CDN-Cache-Control", "Fastly-Cache-Control"]')
    assert load_config(path).defaults.targeted_cache_control == ("CDN-Cache-Control", "Fastly-Cache-Control")
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[redis]\nmode = "cluster"', 'FILE: mode = "cluster" needs `url` (any one node) or `nodes` (seed nodes) '
                                     "- at `$.redis`"),
        ('[redis]\nmode = "sharded"', "FILE: Invalid enum value 'sharded' - at `$.redis.mode`"),
        ('[redis]\nnodes = ["127.0.0.1:7001"]', 'FILE: `nodes` is for mode = "cluster", and mode is "single" '
                                               "- at `$.redis`"),
        ('[redis]\nmode = "cluster"\nnodes = ["7001"]', "FILE: `nodes[0]` must be HOST:PORT such as "
                                                      "\"127.0.0.1:8080\", got '7001' - at `$.redis`"),
        ('[redis]\nmode = "cluster"\nurl = "redis://127.0.0.1:7000/2"',
         'FILE: mode = "cluster" has database 0 only: `url` must end in /0 or nothing - at `$.redis`'),
        ('[redis]\nmode = "cluster"\nurl = "redis://127.0.0.1:7000"\nprefix = "{sc}:v1"',
         'FILE: `prefix` must not contain { or } in mode = "cluster": sidecache puts its own hash tags in key '
         "names - at `$.redis`"),
        ('[redis]\nmode = "sentinel"\nsentinels = ["127.0.0.1:26379"]',
         'FILE: mode = "sentinel" needs `sentinels` (HOST:PORT of each) and `service` (the name they monitor the '
         "primary under) - at `$.redis`"),
        ('[redis]\nmode = "sentinel"\nsentinels = ["127.0.0.1:26379"]\nservice = "m"\n'
         'url = "redis://:secret@10.0.0.1:6379/0"',
         'FILE: in mode = "sentinel", `url` names no host (the sentinels find the primary): only credentials, TLS '
         "and the database, such as redis://:password@/0 - at `$.redis`"),
    ],
)
def test_bad_redis_modes_name_the_field_and_what_is_expected(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message
    assert "secret" not in message


def test_redis_mode_from_the_flag_or_the_environment() -> None:
    env = {"SIDECACHE_REDIS_MODE": "cluster", "SIDECACHE_REDIS_URL": "redis://127.0.0.1:7000/0"}
    assert apply_overrides(Config(), env=env).redis.mode == "cluster"
    assert apply_overrides(Config(), redis_mode="single", env=env).redis.mode == "single"  # the flag wins
    with pytest.raises(ConfigError, match=r'command line or environment: mode = "sentinel" needs `sentinels`'):
        apply_overrides(Config(), redis_mode="sentinel", env={})


def test_workers_without_redis_are_refused_in_one_line() -> None:
    assert check_workers(apply_overrides(Config(), workers=2, env={})) == [
        "server.workers: 2 workers need a shared Redis ([redis] url or SIDECACHE_REDIS_URL): each would keep its "
        "own cache and miss the others' purges; set a Redis or run one worker"]
    assert check_workers(apply_overrides(Config(), workers=2, redis="redis://127.0.0.1:1/0", env={})) == []
    assert check_workers(Config()) == []
