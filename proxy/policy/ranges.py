"""Byte ranges served from a stored complete answer (RFC 9110 14): one `bytes` range, or the whole answer."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.policy.validators import parse_http_date


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The part to send, first and last byte included, of a representation `length` bytes long."""

    first: int
    last: int
    length: int

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.length}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """No byte of the range exists: a 416 with `Content-Range: bytes */length` (RFC 9110 15.5.17)."""

    length: int

    def content_range(self) -> str:
        return f"bytes */{self.length}"


def byte_range(value: str, length: int) -> ByteRange | Unsatisfiable | None:
    """What a `Range` value asks of `length` bytes; None means send the whole answer, as a server may for
    another unit, a malformed value or several ranges (RFC 9110 14.2)."""
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    specs = [s.strip(" \t") for s in spec.split(",")]
    specs = [s for s in specs if s]  # empty list elements are allowed (RFC 9110 5.6.1)
    if len(specs) != 1:
        return None
    first_s, dash, last_s = specs[0].partition("-")
    if not dash or not _digits(last_s, empty=bool(first_s)) or not _digits(first_s, empty=bool(last_s)):
        return None
    if not first_s:  # suffix-range: the last n bytes
        n = int(last_s)
        if n == 0 or length == 0:
            return Unsatisfiable(length)
        return ByteRange(max(0, length - n), length - 1, length)
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid, so the Range field is ignored
    last = int(last_s) if last_s else length - 1
    if first >= length:
        return Unsatisfiable(length)
    return ByteRange(first, min(last, length - 1), length)


def _digits(s: str, *, empty: bool) -> bool:
    return (empty and not s) or (s.isascii() and s.isdigit())


def if_range_holds(value: str, etag: str | None, last_modified: str | None) -> bool:
    """If-Range (RFC 9110 13.1.5): an entity tag must match strongly, a date must equal Last-Modified; when it
    does not hold, the whole answer is sent instead of the range."""
    if value.startswith(('"', "W/")):
        return etag is not None and not value.startswith("W/") and not etag.startswith("W/") and value == etag
    date = parse_http_date(value)
    return date is not None and last_modified is not None and date == parse_http_date(last_modified)
