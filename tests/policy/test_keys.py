"""Cache keys as a table: equal requests share a key, different ones never do."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import MultiDict
from yarl import URL

from proxy.config.rules import CompiledRule, load_rules
from proxy.policy.keys import cache_key, tags_for

RULES = """
[[route]]
name = "all"
match = "GET /p/{name}"
ttl = "1m"
tags = ["player:{name}", "q:{query.season}"]

[[route]]
name = "some"
match = "GET /s/{name}"
ttl = "1m"
query = ["season"]

[[route]]
name = "none"
match = "GET /n/{name}"
ttl = "1m"
query = "none"

[[route]]
name = "fields"
match = "GET /f/{prop_id}"
ttl = "1m"
key = ["query.player", "header.accept-language"]
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompiledRule]:
    path: Path = tmp_path_factory.mktemp("keys") / "r.toml"
    path.write_text(RULES)
    return load_rules(path).by_name


def key(rules: dict[str, CompiledRule], target: str, headers: dict[str, str] | None = None) -> str:
    url = URL(target)
    for rule in rules.values():
        for rx in rule.regexes:
            if m := rx.fullmatch(url.path):
                return cache_key(rule, m.groupdict(), MultiDict(url.query), headers or {})
    raise AssertionError(target)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("/p/judge?a=1&b=2", "/p/judge?b=2&a=1", True),
        ("/p/judge?a=1&a=2", "/p/judge?a=2&a=1", False),  # repeated values keep their order
        ("/p/judge?a=1", "/p/judge?a=1&b=", False),
        ("/p/judge", "/p/soto", False),
        ("/p/judge?x=1", "/s/judge?x=1", False),  # rule name is part of the key
        ("/s/judge?season=2025&_=1", "/s/judge?_=2&season=2025", True),
        ("/s/judge?season=2025", "/s/judge?season=2024", False),
        ("/n/judge?season=2025", "/n/judge", True),
        ("/f/p1?player=judge", "/f/p2?player=judge", True),  # prop_id is not in `key`
        ("/f/p1?player=judge", "/f/p1?player=soto", False),
        ("/p/a%26b=c", "/p/a?b=c", False),  # an encoded separator is not a separator
    ],
)
def test_keys(rules: dict[str, CompiledRule], a: str, b: str, same: bool) -> None:
    assert (key(rules, a) == key(rules, b)) is same


def test_header_fields_are_keyed(rules: dict[str, CompiledRule]) -> None:
    en = key(rules, "/f/p1?player=j", {"accept-language": "en"})
    assert en != key(rules, "/f/p1?player=j", {"accept-language": "de"})


def test_tags_expand_path_and_query_fields(rules: dict[str, CompiledRule]) -> None:
    assert tags_for(rules["all"], {"name": "Aaron Judge"}, MultiDict(season="2025"), {}) == [
        "player:Aaron Judge", "q:2025"
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("/f/1?player=judge&player=mallory", "/f/1?player=judge"),  # a repeated field is not its first value
        ("/p/j?stat_types=hits%26stat_types%3Druns", "/p/j?stat_types=hits&stat_types=runs"),  # encoded separators
        ("/p/j?a=1%1Fb", "/p/j?a=1&b"),
        ("/p/j?a=", "/p/j"),  # empty is not absent
    ],
)
def test_crafted_queries_never_share_a_key_with_another_request(rules: dict[str, CompiledRule], a: str,
                                                                 b: str) -> None:
    assert key(rules, a) != key(rules, b)
