"""One bytes range of a stored answer (RFC 9110 14), and If-Range (13.1.5), as tables."""

from __future__ import annotations

import pytest

from proxy.policy.ranges import ByteRange, Unsatisfiable, byte_range, if_range_holds

LM = "Tue, 01 Jul 2025 10:00:00 GMT"


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        ("bytes=0-1", 10, ByteRange(0, 1, 10)),
        ("bytes=5-", 10, ByteRange(5, 9, 10)),
        ("bytes=-3", 10, ByteRange(7, 9, 10)),
        ("bytes=-30", 10, ByteRange(0, 9, 10)),  # longer than the body: all of it
        ("bytes=8-20", 10, ByteRange(8, 9, 10)),  # last-pos past the end is clipped
        ("Bytes = 2-3", 10, ByteRange(2, 3, 10)),  # the unit is case-insensitive
        ("bytes=2-3, ", 10, ByteRange(2, 3, 10)),  # empty list elements
        ("bytes=10-", 10, Unsatisfiable(10)),
        ("bytes=20-30", 10, Unsatisfiable(10)),
        ("bytes=-0", 10, Unsatisfiable(10)),
        ("bytes=0-0", 0, Unsatisfiable(0)),
        ("bytes=0-1,3-4", 10, None),  # several ranges: the whole answer
        ("bytes=3-1", 10, None),  # invalid: ignored
        ("bytes=a-b", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1", 10, None),
        ("items=0-1", 10, None),
        ("0-1", 10, None),
    ],
)
def test_byte_range(value: str, length: int, expected: ByteRange | Unsatisfiable | None) -> None:
    assert byte_range(value, length) == expected


def test_content_range() -> None:
    assert ByteRange(0, 1, 10).content_range() == "bytes 0-1/10"
    assert Unsatisfiable(10).content_range() == "bytes */10"


@pytest.mark.parametrize(
    ("value", "etag", "last_modified", "holds"),
    [
        ('"a"', '"a"', None, True),
        ('"a"', '"b"', None, False),
        ('W/"a"', 'W/"a"', None, False),  # If-Range compares strongly: a weak tag never holds
        ('"a"', 'W/"a"', None, False),
        ('"a"', None, LM, False),
        (LM, '"a"', LM, True),
        ("Tue, 01 Jul 2025 09:00:00 GMT", '"a"', LM, False),
        (LM, '"a"', None, False),
        ("not a date", None, LM, False),
    ],
)
def test_if_range(value: str, etag: str | None, last_modified: str | None, holds: bool) -> None:
    assert if_range_holds(value, etag, last_modified) is holds
