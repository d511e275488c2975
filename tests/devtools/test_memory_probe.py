"""The memory rows' probes send what their labels say: distinct 2-7 KB targets on a ruled, fully keyed route, and
JSON bodies of exactly the size asked for."""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.config.rules import load_rules
from proxy.devtools.memory_rows import long_targets
from proxy.devtools.processes import bare_body, rss, shipped_rules


def test_long_targets_are_distinct_long_and_on_a_cacheable_rule_keyed_on_every_parameter() -> None:
    rules = load_rules(shipped_rules())
    targets = list(long_targets(500))
    assert len(set(targets)) == 500
    for target in targets:
        u = urlsplit(target)
        assert 2000 <= len(parse_qs(u.query)["pad"][0]) <= 7000 and len(target) < 8000  # under aiohttp's 8190 line
        found = rules.match_pattern("GET", u.path.replace("%20", " "))
        assert found is not None
        rule = found[0]
        assert rule.name == "player-data" and rule.cacheable and rule.route.query == "all"


@pytest.mark.parametrize("kind", ["pad", "digits"])
@pytest.mark.parametrize("size", [16, 1500, 1 << 20])
def test_bare_bodies_are_json_of_the_size_asked(kind: str, size: int) -> None:
    body = bare_body(size, kind)
    assert len(body) == size
    json.loads(body)


def test_rss_reads_a_process_by_pid() -> None:
    assert rss(os.getpid()) == pytest.approx(rss(), rel=0.1) and rss() > 1 << 20
