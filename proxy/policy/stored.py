"""The one way a response becomes a stored entry (with its gzip copy), and the one way a 304 updates one
(RFC 9111 3, 4.3.4)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from proxy.policy.encoding import compressible, gzipped, with_vary
from proxy.policy.entry import CachedResponse
from proxy.policy.freshness import stored_headers
from proxy.policy.validators import derived_etag


def entry_of(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    stored_at: float,
    ttl: float,
    route: str,
    stale_while_revalidate: float = 0.0,
    stale_if_error: float = 0.0,
    tags: list[str] | None = None,
    keep: float = 0.0,
    derive_etag: bool = True,
    source: str = "",
    vary: list[str] | None = None,
    omit: Iterable[str] = (),
    compress: bool = False,
    echoed: bool = False,
) -> CachedResponse:
    """Headers without cookies, lengths, ages or hop-by-hop ones, and an ETag of our own where the origin sent none
    (`derive_etag` False for answers whose body is rewritten per client, which get theirs per answer). The origin's
    Date is kept apart, to be sent again with every answer from the entry; `omit`: fields never stored."""
    headers = list(headers)
    kept = stored_headers(headers, omit)
    if derive_etag and not any(k.lower() == "etag" for k, _ in kept):
        kept.append(("ETag", derived_etag(body)))
    # `echoed`: answers carry each caller's own ids, so the copy is made per echoed body (serving/echoes.py), not here
    packed = gzipped(body, kept) if compress and not echoed else b""
    if packed or (compress and echoed and compressible(body, kept)):
        kept = with_vary(kept, "Accept-Encoding")
    return CachedResponse(
        status=status, headers=kept, body=body, stored_at=stored_at, ttl=ttl,
        stale_while_revalidate=stale_while_revalidate, stale_if_error=stale_if_error, tags=list(tags or ()),
        route=route, keep=keep, source=source, vary=list(vary or ()), date=_date(headers, ""), gzip=packed,
    )


def refreshed(entry: CachedResponse, not_modified: Iterable[tuple[str, str]], *, now: float) -> CachedResponse:
    """The stored body stands, with the 304's headers laid over the stored ones and a new lifetime."""
    not_modified = list(not_modified)
    updates = stored_headers(not_modified)
    replaced = {k.lower() for k, _ in updates}
    headers = [h for h in entry.headers if h[0].lower() not in replaced] + updates
    if entry.gzip:  # the stored gzip copy still answers clients that accept it: say so whatever the 304 said
        headers = with_vary(headers, "Accept-Encoding")
    return msgspec.structs.replace(entry, headers=headers, stored_at=now, date=_date(not_modified, entry.date))


def _date(headers: list[tuple[str, str]], default: str) -> str:
    return next((v for k, v in headers if k.lower() == "date"), default)
