"""Cache directives as this cache reads them: every `Cache-Control` line as one list (RFC 9110 5.3), or the
first valid targeted field of RFC 9213 (`CDN-Cache-Control` and the like) in its place.

Directives are a dict of lower-case names to their unquoted argument ("" when there is none). A directive given
twice keeps its first occurrence (RFC 9111 4.2.1 allows the first or "stale"); conflicting directives are left for
the readers, which apply the most restrictive one (no-store over everything, private over public, no-cache over
max-age).
"""

from __future__ import annotations

from collections import UserString
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import http_sf
from multidict import MultiMapping

Directives = dict[str, str]

DELTA_MAX: Final = 2**31  # RFC 9111 1.2.2: a larger delta-seconds is read as this
# Directives whose argument is delta-seconds: in a targeted field, anything but an Integer is ignored (RFC 9213 2.1).
_DELTA: Final = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def field_lines(headers: Mapping[str, str], name: str) -> list[str]:
    """Every line of a field: a multimapping keeps them all, a plain mapping has one."""
    if isinstance(headers, MultiMapping):
        return list(headers.getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


def cache_control(lines: str | Iterable[str] | None) -> Directives:
    """Parse Cache-Control field lines into directives (RFC 9111 5.2): commas inside quoted strings are not
    separators, and quoted arguments are unquoted (recipients accept both forms, RFC 9111 5.2)."""
    if lines is None:
        return {}
    text = lines if isinstance(lines, str) else ",".join(lines)
    out: Directives = {}
    for name, arg in _members(text):
        out.setdefault(name, arg)
    return out


def _members(text: str) -> Iterable[tuple[str, str]]:
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in ",=":
            j += 1
        raw = text[i:j]
        name = raw.strip().lower()
        arg = ""
        valid = True
        if j < n and text[j] == "=":
            j += 1
            valid = raw == raw.rstrip() and (j == n or not text[j].isspace())  # no whitespace around "="
            if j < n and text[j] == '"':  # quoted-string, with quoted-pair
                j += 1
                chars = []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(text[j])
                    j += 1
                arg = "".join(chars)
                while j < n and text[j] != ",":  # anything between the closing quote and the comma is dropped
                    j += 1
            else:
                k = j
                while j < n and text[j] != ",":
                    j += 1
                arg = text[k:j].strip()
        if name and valid:
            yield name, arg
        i = j + 1


def delta_seconds(value: str | None) -> int | None:
    """A delta-seconds argument (1*DIGIT, RFC 9111 1.2.2), capped at 2^31; None when absent or not one."""
    if value is None or not value or not value.isascii() or not value.isdigit():
        return None
    return min(int(value), DELTA_MAX)


def targeted(headers: Mapping[str, str], targets: Sequence[str]) -> Directives | None:
    """The directives of the first targeted field in `targets` that is present, a valid Structured Fields
    Dictionary and not empty (RFC 9213 2.2); None when there is none, and Cache-Control and Expires rule."""
    for name in targets:
        lines = field_lines(headers, name)
        if not lines:
            continue
        try:
            parsed = http_sf.parse(", ".join(lines).encode("ascii"), tltype="dictionary")
        except (http_sf.StructuredFieldError, UnicodeEncodeError):
            continue  # a parsing error: as if the field were absent (RFC 9213 2.1)
        if not isinstance(parsed, dict) or not parsed:
            continue
        out: Directives = {}
        for key, member in parsed.items():
            value = member[0] if isinstance(member, tuple) else member  # parameters are ignored
            if key in _DELTA:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    continue  # wrong type: the directive is ignored
                out[key] = str(min(value, DELTA_MAX))
            elif value is True:
                out[key] = ""
            elif isinstance(value, (str, UserString)):  # a String, or a Token (http_sf's is a UserString)
                out[key] = str(value)
        return out
    return None


def response_directives(headers: Mapping[str, str], targets: Sequence[str] = ()) -> tuple[Directives, bool]:
    """The directives this cache follows for a response, and whether they came from a targeted field (then
    Cache-Control and Expires are ignored, RFC 9213 2.2)."""
    if targets and (found := targeted(headers, targets)) is not None:
        return found, True
    return cache_control(field_lines(headers, "Cache-Control")), False
