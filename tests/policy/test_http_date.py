"""HTTP-dates exactly as RFC 9110 5.6.7 writes them, and what an invalid Expires means (RFC 9111 5.3)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.origin_policy import OriginPolicy, origin_policy
from proxy.policy.validators import parse_http_date

T = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
NOW = 1_750_000_000.0
DATE = "Sun, 15 Jun 2025 15:06:40 GMT"  # == NOW
IN_60 = "Sun, 15 Jun 2025 15:07:40 GMT"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", T),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", T),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", T),  # obsolete asctime
        ("Sun Nov 16 08:49:37 1994", T + 10 * 86400),
        ("Thu, 18 Aug 2050 02:01:18 GMT", 2544400878.0),
        ("Thursday, 18-Aug-50 02:01:18 GMT", 2544400878.0),  # within 50 years of 2025: 2050
        ("Sunday, 06-Nov-94 08:49:37 GMT", T),  # more than 50 years ahead of 2025: 1994
        ("Wed, 31 Dec 2025 23:59:60 GMT", 1767225600.0),  # a leap second
        ("Thu, 18 Aug 2050 2:01:18 GMT", None),  # one-digit hour
        ("Thu, 18 Aug 50 02:01:18 GMT", None),  # two-digit year in IMF-fixdate
        ("Thu, 18 Aug 2050 02:01:18 UTC", None),
        ("Thu, 18 Aug 2050 02:01:18 +0000", None),
        ("Thu, 18-Aug-2050 02:01:18 GMT", None),  # dashes
        ("Thu, 18  Aug  2050 02:01:18 GMT", None),  # extra spaces
        ("Thu 18 Aug 2050 02:01:18 GMT", None),  # no comma
        ("Thu, 18 Aug 2050 02.01.18 GMT", None),  # periods
        ("THU, 18 Aug 2050 02:01:18 GMT", 2544400878.0),  # names in any case (5.6.7's robustness)
        ("Thu, 18 AUG 2050 02:01:18 GMT", 2544400878.0),
        ("Thu, 18 Aug 2050 02:01:18 gMT", 2544400878.0),
        ("Thu, 31 Feb 2050 02:01:18 GMT", None),
        ("Thu, 18 Aug 2050 24:01:18 GMT", None),
        ("Thu, 18 Aug 2050 02:01:18", None),
        ("0", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_http_date(value: str | None, expected: float | None) -> None:
    assert parse_http_date(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([("Expires", IN_60), ("Date", DATE)], OriginPolicy(ttl=60)),
        ([("Expires", "Sun, 15 Jun 2025 15:07:40 UTC"), ("Date", DATE)], "stale-on-arrival"),  # invalid: expired
        ([("Expires", "Sun, 15 Jun 25 15:07:40 GMT"), ("Date", DATE)], "stale-on-arrival"),
        ([("Expires", IN_60), ("Expires", IN_60), ("Date", DATE)], "stale-on-arrival"),  # several lines: invalid
        ([("Expires", IN_60)], OriginPolicy(ttl=60)),  # no Date: the time it arrived
        ([("Expires", IN_60), ("Date", "yesterday")], OriginPolicy(ttl=60)),  # an invalid Date is ignored
        ([("Cache-Control", "max-age=30"), ("Expires", "0")], OriginPolicy(ttl=30)),  # max-age wins over Expires
    ],
)
def test_expires(lines: list[tuple[str, str]], expected: OriginPolicy | str) -> None:
    assert origin_policy(200, CIMultiDict(lines), CIMultiDict(), NOW) == expected
