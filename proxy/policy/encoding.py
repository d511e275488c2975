"""Content coding for stored answers: compressed once when an entry is stored, never per hit.

Fills ask the upstream for `identity`, so one stored body serves every client; a client that accepts gzip then
gets the gzip copy made at store time (with `Vary: Accept-Encoding` on every answer from that entry, as RFC 9110
12.5.3 asks of a response that depends on it). gzip only, from the standard library: every client speaks it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Final

MIN_BYTES: Final = 1024  # below this, gzip's header and a round of CPU cost more than the bytes saved
LEVEL: Final = 6  # zlib's default: about 3-8x on JSON, once per stored entry
_TEXT: Final = ("text/", "application/json", "application/javascript", "application/xml", "image/svg+xml",
                "application/problem+json", "application/ld+json")


def compressible(body: bytes, headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a body may be worth a gzip copy: large enough, text, not encoded already. An entry whose body is
    says `Vary: Accept-Encoding`, whether its copy is made at store time or per echoed body (serving/echoes.py)."""
    if len(body) < MIN_BYTES:
        return False
    kind = ""
    for k, v in headers:
        low = k.lower()
        if low == "content-encoding" and v.strip().lower() not in ("", "identity"):
            return False
        if low == "content-type":
            kind = v.strip().lower()
    return kind.startswith(_TEXT) or kind.endswith("+json")


def gzipped(body: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """The gzip copy worth keeping beside a stored body, or b"" (too small, not text, already encoded, no gain)."""
    if not compressible(body, headers):
        return b""
    packed = gzip.compress(body, compresslevel=LEVEL, mtime=0)
    return packed if len(packed) < len(body) * 0.9 else b""


def accepts_gzip(accept_encoding: str | None) -> bool:
    """`Accept-Encoding` names gzip (or `*`) with a non-zero q (RFC 9110 12.5.3)."""
    if not accept_encoding:
        return False
    for member in accept_encoding.split(","):
        coding, _, params = member.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip().rstrip("0").rstrip(".") in ("0", ""))
    return False


def with_vary(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The stored headers with `name` added to Vary (kept once)."""
    out, done = [], False
    for k, v in headers:
        if k.lower() == "vary" and not done:
            names = [n.strip() for n in v.split(",") if n.strip()]
            if name.lower() not in (n.lower() for n in names) and "*" not in names:
                v = ", ".join([*names, name])
            done = True
        out.append((k, v))
    return out if done else [*out, ("Vary", name)]


def weak(etag: str) -> str:
    """The ETag of a coded representation: weak, so it is never taken for the identity bytes (RFC 9110 8.8.3)."""
    return etag if etag.startswith("W/") else "W/" + etag
