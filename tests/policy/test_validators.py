"""Validators and client conditions, as tables (RFC 9110 8.8, 13)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.validators import derived_etag, etag_matches, is_derived, not_modified, revalidation_headers

LM = "Tue, 01 Jul 2025 10:00:00 GMT"


def test_derived_etag_is_strong_stable_and_marked() -> None:
    a, b = derived_etag(b'{"x": 1}'), derived_etag(b'{"x": 2}')
    assert a == derived_etag(b'{"x": 1}') and a != b
    assert a.startswith('"sc-') and a.endswith('"') and is_derived(a)
    assert not is_derived('"abc"')


@pytest.mark.parametrize(
    ("inm", "etag", "match"),
    [
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', True),  # weak comparison
        ('"a"', 'W/"a"', True),
        ('"b", "a"', '"a"', True),
        ('"b"', '"a"', False),
        ("*", '"a"', True),
    ],
)
def test_etag_matches(inm: str, etag: str, match: bool) -> None:
    assert etag_matches(inm, etag) is match


@pytest.mark.parametrize(
    ("request_headers", "etag", "last_modified", "expected"),
    [
        ({"If-None-Match": '"a"'}, '"a"', None, True),
        ({"If-None-Match": '"b"'}, '"a"', LM, False),
        ({"If-None-Match": '"b"', "If-Modified-Since": LM}, '"a"', LM, False),  # INM wins over IMS
        ({"If-Modified-Since": LM}, '"a"', LM, True),
        ({"If-Modified-Since": "Tue, 01 Jul 2025 09:59:59 GMT"}, None, LM, False),
        ({"If-Modified-Since": "not a date"}, None, LM, False),
        ({"If-Modified-Since": LM}, '"a"', None, False),
        ({}, '"a"', LM, False),
    ],
)
def test_not_modified(request_headers: dict[str, str], etag: str | None, last_modified: str | None,
                      expected: bool) -> None:
    assert not_modified(CIMultiDict(request_headers), etag, last_modified) is expected


def test_revalidation_uses_only_the_origins_validators() -> None:
    assert revalidation_headers(CIMultiDict({"ETag": '"o1"', "Last-Modified": LM})) == {
        "If-None-Match": '"o1"', "If-Modified-Since": LM
    }
    assert revalidation_headers(CIMultiDict({"ETag": derived_etag(b"x")})) == {}
