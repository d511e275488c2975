"""Validators: ETag and Last-Modified for stored answers, and whether a client's condition lets us say 304.

RFC 9110 8.8 (validators) and 13 (conditional requests); pure functions of headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime
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


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch, or None for a missing or malformed date (then it is ignored, RFC 9110 5.6.7)."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


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
