"""Age as RFC 9111 5.1 parses it, and the corrected initial age of 4.2.3."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.age import initial_age, parse_age
from proxy.policy.origin_policy import OriginPolicy, origin_policy

NOW = 1_750_000_000.0
DATE_30_AGO = "Sun, 15 Jun 2025 15:06:10 GMT"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["20"], 20), (["7200,0"], 7200), (["0,7200"], 0), (["7200", "0"], 7200), (["0", "7200"], 0),
        (["0, 0"], 0), (["abc"], None), (["-7200"], None), (["7200.0"], None), ([" 5 "], 5), ([], None),
        (["99999999999"], 2**31), (["\u0663"], None),
    ],
)
def test_parse_age(lines: list[str], expected: int | None) -> None:
    assert parse_age(lines) == expected


@pytest.mark.parametrize(
    ("age", "date", "requested", "received", "expected"),
    [
        (None, None, 100.0, 100.0, 0.0),
        (20, None, 100.0, 100.0, 20.0),
        (20, None, 98.0, 100.0, 22.0),  # the response delay counts as age
        (None, 70.0, 100.0, 100.0, 30.0),  # apparent age: received minus Date
        (10, 70.0, 100.0, 100.0, 30.0),  # the larger of the two
        (40, 70.0, 99.0, 100.0, 41.0),
        (None, 130.0, 100.0, 100.0, 0.0),  # a Date in the future is no negative age
        (None, 99.0, 100.0, 100.6, 1.0),  # Date has whole seconds: so has the apparent age (1.6 -> 1)
    ],
)
def test_initial_age(age: int | None, date: float | None, requested: float, received: float,
                     expected: float) -> None:
    assert initial_age(age, date, requested, received) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("lines", "requested_at", "ttl", "age"),
    [
        ([("Cache-Control", "max-age=60"), ("Date", DATE_30_AGO)], None, 30.0, 30.0),
        ([("Cache-Control", "max-age=60"), ("Age", "10"), ("Date", DATE_30_AGO)], None, 30.0, 30.0),
        ([("Cache-Control", "max-age=60"), ("Age", "40"), ("Date", DATE_30_AGO)], None, 20.0, 40.0),
        ([("Cache-Control", "max-age=60"), ("Age", "abc")], None, 60.0, 0.0),
        ([("Cache-Control", "max-age=60"), ("Age", "10")], NOW - 5, 45.0, 15.0),
    ],
)
def test_origin_policy_counts_the_corrected_initial_age(lines: list[tuple[str, str]], requested_at: float | None,
                                                        ttl: float, age: float) -> None:
    got = origin_policy(200, CIMultiDict(lines), CIMultiDict(), NOW, requested_at=requested_at)
    assert isinstance(got, OriginPolicy) and (got.ttl, got.age) == (ttl, age)


def test_an_answer_older_than_its_lifetime_is_stale_on_arrival() -> None:
    lines = [("Cache-Control", "max-age=20"), ("Date", DATE_30_AGO)]
    assert origin_policy(200, CIMultiDict(lines), CIMultiDict(), NOW) == "stale-on-arrival"
