"""Validators: ETag and Last-Modified for stored answers, and whether a client's condition lets us say 304.

RFC 9110 8.8 (validators) and 13 (conditional requests); pure functions of headers.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Final

DERIVED_PREFIX: Final = '"sc-'  # our own ETags: never sent upstream, the origin would not know them
KEEP: Final = 600.0  # seconds an answer with the origin's validators outlives its windows, to be revalidated


def derived_etag(body: bytes) -> str:
    """A strong ETag from the body, for origins that send none (the A1Betting backend sends none)."""
    return DERIVED_PREFIX + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def is_derived(etag: str) -> bool:
    return etag.startswith(DERIVED_PREFIX)


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x" (RFC 9110 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    want = _opaque(etag)
    return any(_opaque(t) == want for t in if_none_match.split(","))


_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH: Final = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME: Final = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
# RFC 9110 5.6.7: single spaces, two-digit fields, GMT only; the two obsolete forms are still accepted. Names are
# matched in any case, the one robustness 5.6.7 encourages that no other rule forbids (the suite's "should" tests).
_IMF_FIXDATE: Final = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<day>\d\d) " + _MONTH
                                 + r" (?P<year>\d{4}) " + _TIME + " GMT", re.ASCII | re.IGNORECASE)
_RFC850: Final = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (?P<day>\d\d)-"
                            + _MONTH + r"-(?P<year>\d\d) " + _TIME + " GMT", re.ASCII | re.IGNORECASE)
_ASCTIME: Final = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MONTH + r" (?P<day>\d\d| \d) " + _TIME
                             + r" (?P<year>\d{4})", re.ASCII | re.IGNORECASE)


def parse_http_date(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds since the epoch of an HTTP-date, or None for a missing or invalid one (RFC 9110 5.6.7).

    Only IMF-fixdate and the obsolete RFC 850 and asctime forms: no other zone, spacing or field width (the lenient
    `email.utils` takes `UTC`, two-digit years and one-digit hours). `now` places RFC 850's two-digit year.
    """
    if not value:
        return None
    for form in (_IMF_FIXDATE, _RFC850, _ASCTIME):
        if (m := form.fullmatch(value)) is not None:
            break
    else:
        return None
    year, month, day = int(m["year"]), _MONTHS.index(m["month"].capitalize()) + 1, int(m["day"])
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"])
    if form is _RFC850:  # more than 50 years ahead means the most recent past year with those digits
        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    if not (1 <= day <= calendar.monthrange(year, month)[1] and hour <= 23 and minute <= 59 and second <= 60):
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def not_modified(request: Mapping[str, str], etag: str | None, last_modified: str | None) -> bool:
    """True when a GET/HEAD's own conditions say the client already has this representation.

    If-None-Match wins over If-Modified-Since when both are present (RFC 9110 13.2.2, steps 3 and 4).
    """
    inm = request.get("If-None-Match")
    if inm is not None:
        return etag is not None and etag_matches(inm, etag)
    ims = parse_http_date(request.get("If-Modified-Since"))
    lm = parse_http_date(last_modified)
    return ims is not None and lm is not None and lm <= ims


def keep_for(headers: Mapping[str, str]) -> float:
    """How long to keep an answer past its windows: only one the origin can confirm with a 304 is worth keeping."""
    return KEEP if revalidation_headers(headers) else 0.0


def revalidation_headers(stored: Mapping[str, str]) -> dict[str, str]:
    """The conditions to ask the origin whether a stored answer is still current (origin validators only)."""
    out = {}
    etag = stored.get("ETag")
    if etag and not is_derived(etag):
        out["If-None-Match"] = etag
    if lm := stored.get("Last-Modified"):
        out["If-Modified-Since"] = lm
    return out
