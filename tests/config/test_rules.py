"""Rules: pattern matching as a table, and the exact messages a broken rules file produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.rules import compile_pattern, load_rules
from proxy.errors import ConfigError
from tests.support.processes import ROOT


@pytest.mark.parametrize(
    ("pattern", "method", "path", "params"),
    [
        ("GET /players/{name}/id", "GET", "/players/Aaron Judge/id", {"name": "Aaron Judge"}),
        ("GET /players/{name}/id", "GET", "/players/a/b/id", None),
        ("GET /players/{name}/id", "GET", "/players/x/id/", None),
        ("GET /files/{rest...}", "GET", "/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("GET|POST /x", "POST", "/x", {}),
        ("* /any", "DELETE", "/any", {}),
        ("GET /a.b", "GET", "/aXb", None),  # literal dots stay literal
    ],
)
def test_patterns_match_methods_and_paths(pattern: str, method: str, path: str, params: dict[str, str] | None) -> None:
    methods, rx, _ = compile_pattern(pattern)
    m = rx.fullmatch(path)
    matched = m is not None and (method in methods or "*" in methods)
    assert (m.groupdict() if matched and m else None) == params


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    return str(info.value).replace(str(path) + "/", "").replace(str(path), "FILE")


def test_every_problem_is_reported_at_once_with_file_and_field(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", """
[[route]]
name = "x"
match = "GET /a/{id}"
ttl = "5m"
key = ["path.nope"]

[[route]]
name = "x"
match = ["POST /a/{id}", "GET /b"]
ttl = "5m"
""")
    write(tmp_path, "b.toml", """
[[route]]
name = "y"
match = "GET /c"
ttl = "5q"
""")
    write(tmp_path, "c.toml", """
[[route]]
name = "z"
match = "GET /a/{id}"
tll = "5m"
""")
    write(tmp_path, "d.toml", """
[[route]]
name = "w"
match = "GET /a/{id}"
ttl = "1m"
""")
    assert problems(tmp_path) == "\n".join([
        "invalid rules:",
        '  b.toml: Expected a duration such as "200ms", "30s", "5m", "24h", got \'5q\' - at `$.route[0].ttl`',
        "  c.toml: Object contains unknown field `tll` - at `$.route[0]`",
        "  a.toml: rule 'x' at `$.route[0].key`: `path.nope` names a path parameter that not every `match` "
        "pattern has (they have: id)",
        "  a.toml: rule 'x' at `$.route[1].name`: duplicate rule name, first defined in a.toml",
        "  a.toml: rule 'x' at `$.route[1].ttl`: only GET and HEAD responses are cached, but `match` allows POST; "
        'use ttl = "0s" for a pass-through rule',
        "  d.toml: rule 'w' at `$.route[0].match`: 'GET /a/{id}' is already matched by rule 'x'",
    ])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "a"\nmatch = "/x"\nttl = "1m"',
         "rule 'a' at `$.route[0].match`: '/x' must be \"METHOD /path\" with METHOD one of GET, HEAD, POST, PUT, "
         "PATCH, DELETE, OPTIONS or * (several joined by |) and a path starting with /"),
        ('name = "a"\nmatch = "GET /x/{id}/{id}"\nttl = "1m"',
         "rule 'a' at `$.route[0].match`: 'GET /x/{id}/{id}': parameters are written {name} or {name...}, "
         "each name once"),
        ('name = "bad name"\nmatch = "GET /x"\nttl = "1m"',
         "Expected `str` matching regex '^[A-Za-z0-9][A-Za-z0-9_.-]*$' - at `$.route[0].name`"),
        ('name = "a"\nmatch = "GET /x"\nttl = "1m"\nshare = "everyone"',
         "Invalid enum value 'everyone' - at `$.route[0].share`"),
        ('name = "a"\nmatch = "GET /x"\nttl = "1m"\ncache_status = [200, 500]',
         "Expected `int` <= 499 - at `$.route[0].cache_status[1]`"),
        ('name = "a"\nmatch = "GET /x"\nttl = "1m"\nkey = ["body.x"]',
         "rule 'a' at `$.route[0].key`: 'body.x' is not a field reference like `path.NAME`, `query.NAME` or "
         "`header.NAME`"),
        ('name = "a"\nmatch = "GET /x"', "Object missing required field `ttl` - at `$.route[0]`"),
    ],
)
def test_one_bad_field_names_file_field_and_expectation(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, "r.toml", "[[route]]\n" + body + "\n")
    assert problems(path) == f"invalid rules:\n  FILE: {message}"


def test_missing_file_and_empty_folder_are_errors(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.toml") == (
        "invalid rules:\n  FILE: cannot read rules file: No such file or directory"
    )
    (tmp_path / "empty").mkdir()
    assert problems(tmp_path / "empty") == "invalid rules:\n  FILE: no rules files (*.toml) found"


def test_shipped_rules_load_and_route_the_a1betting_paths() -> None:
    rules = load_rules(ROOT / "rules")
    expect = {
        ("GET", "/api/v1/optimized/player-data/Aaron Judge"): ("player-data", 300),
        ("GET", "/mlb/enhanced-prop-analysis/p1"): ("prop-analysis", 300),
        ("GET", "/api/v1/players/Aaron Judge/id"): ("player-id", 86400),
        ("GET", "/api/v1/players/592450/game-logs"): ("game-logs", 300),
        ("GET", "/api/v1/players/592450/season-stats"): ("season-stats", 600),
        ("GET", "/api/v1/optimized/cache-stats"): ("live-counters", 2),
        ("POST", "/api/v1/optimized/warm-cache"): ("never-cache", 0),
        ("POST", "/api/v1/optimized/benchmark-performance"): ("never-cache", 0),
    }
    for (method, path), (name, ttl) in expect.items():
        matched = rules.match(method, path)
        assert matched is not None, path
        assert (matched[0].name, matched[0].route.ttl) == (name, ttl)
    assert rules.match("POST", "/api/v1/optimized/batch-prop-analysis") is None


def test_every_broken_route_of_one_file_is_reported_in_one_run(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", """
[[route]]
name = "a"
match = "GET /a"
ttl = "5q"

[[route]]
name = "b"
match = []
ttl = "1m"

[[route]]
name = "c"
match = "GET /api/teams/*"
ttl = "1m"

[[route]]
name = "d"
match = "GET /d"
ttl = "1m"
colour = "red"

[[route]]
name = "e"
match = "GET /e"
ttl = "1m"
share = "everyone"
""")
    assert problems(path).split("\n") == [
        "invalid rules:",
        '  FILE: Expected a duration such as "200ms", "30s", "5m", "24h", got \'5q\' - at `$.route[0].ttl`',
        "  FILE: Expected `array` of length >= 1 - at `$.route[1].match`",
        "  FILE: Object contains unknown field `colour` - at `$.route[3]`",
        "  FILE: Invalid enum value 'everyone' - at `$.route[4].share`",
        "  FILE: rule 'c' at `$.route[2].match`: 'GET /api/teams/*': `*` is not a wildcard in a path (it would "
        "match a literal *); write {rest...} for the rest of the path or {name} for one segment",
    ]


def test_a_file_without_routes_is_an_error_not_zero_rules(tmp_path: Path) -> None:
    path = write(tmp_path, "r.toml", "# nothing yet\n")
    assert problems(path) == "invalid rules:\n  FILE: 0 rules; a rules file needs at least one [[route]] table"


@pytest.mark.parametrize(
    ("first", "second", "shadowed"),
    [
        ("GET /api/teams/{id}", "GET /api/teams/nyy", True),
        ("GET /api/{rest...}", "GET /api/teams/{id}", True),
        ("* /x", "GET|POST /x", True),
        ("GET /x", "HEAD /x", True),  # a GET rule answers HEAD too
        ("GET /api/teams/{id}", "GET /api/teams/{id}/roster", False),
        ("GET /api/teams/{id}", "POST /api/teams/nyy", False),
        ("GET /a/{x}/{y}", "GET /a/{rest...}", False),  # the rest may be one segment
        ("GET /api/teams/nyy", "GET /api/teams/{id}", False),
    ],
)
def test_a_rule_an_earlier_one_always_matches_first_is_a_warning(
    tmp_path: Path, first: str, second: str, shadowed: bool
) -> None:
    path = write(tmp_path, "r.toml", f'[[route]]\nname = "a"\nmatch = "{first}"\nttl = "0s"\n\n'
                                     f'[[route]]\nname = "b"\nmatch = "{second}"\nttl = "0s"\n')
    warnings = [w.replace(str(path), "FILE") for w in load_rules(path).warnings]
    assert warnings == ([f"FILE: rule 'b' at `$.route[1].match`: '{second}' is never reached: rule 'a' ('{first}', "
                         "in FILE) comes first and matches every request it does; move this rule above it or narrow "
                         "that pattern"] if shadowed else [])


def test_a_batch_cool_down_longer_than_its_maximum_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", """
[[route]]
name = "p"
match = "GET /p/{id}"
ttl = "5m"
  [route.batch]
  to = "POST /batch"
  group_by = "query.player"
  item = { id = "path.id" }
  body = { requests = "$items" }
  match_on = "id"
  cool_down = "20m"
""")
    assert problems(path) == ("invalid rules:\n  FILE: `cool_down` must be above 0s and at most `max_cool_down` (10m), "
                              "got 20m - at `$.route[0].batch`")
