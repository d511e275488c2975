"""gzip for stored answers, as a table: who gets it, what is worth compressing, how Vary and ETag change."""

from __future__ import annotations

import gzip
import os

import pytest

from proxy.policy.encoding import accepts_gzip, gzipped, weak, with_vary

JSON = [("Content-Type", "application/json")]


@pytest.mark.parametrize(
    ("value", "gzip_ok"),
    [(None, False), ("", False), ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.5", True),
     ("gzip;q=0", False), ("gzip; q=0.0", False), ("identity", False), ("*", True), ("GZIP", True),
     ("x-gzip", True), ("deflate", False), ("gzip;q=0.001", True)],
)
def test_who_accepts_gzip(value: str | None, gzip_ok: bool) -> None:
    assert accepts_gzip(value) is gzip_ok


def test_what_is_worth_compressing() -> None:
    text = b'{"a": "' + b"x" * 4000 + b'"}'
    packed = gzipped(text, JSON)
    assert packed and gzip.decompress(packed) == text
    assert gzipped(b'{"a": 1}', JSON) == b""  # too small to gain
    assert gzipped(text, [("Content-Type", "image/png")]) == b""  # not text
    assert gzipped(text, [*JSON, ("Content-Encoding", "br")]) == b""  # already encoded
    assert gzipped(os.urandom(5000), [("Content-Type", "text/plain")]) == b""  # no real gain


def test_vary_and_etag_of_the_coded_copy() -> None:
    assert with_vary([("A", "1")], "Accept-Encoding") == [("A", "1"), ("Vary", "Accept-Encoding")]
    assert with_vary([("Vary", "Origin")], "Accept-Encoding") == [("Vary", "Origin, Accept-Encoding")]
    assert with_vary([("Vary", "accept-encoding")], "Accept-Encoding") == [("Vary", "accept-encoding")]
    assert (weak('"abc"'), weak('W/"abc"')) == ('W/"abc"', 'W/"abc"')
