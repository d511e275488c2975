"""Responses built from stored entries: Age, Cache-Status, Via, HEAD, and 304 for a client's own conditions."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .entry import CachedResponse
from .headers import VIA
from .validators import not_modified

# What a 304 carries of the stored response (RFC 9110 15.4.5), besides our own Age, Cache-Status and Via.
_KEPT_ON_304: Final = frozenset({"etag", "cache-control", "expires", "vary", "content-location", "last-modified"})


def from_entry(
    request: web.BaseRequest,
    entry: CachedResponse,
    cache_status: str,
    age: float | None,
    *,
    body: bytes | None = None,
    etag: str | None = None,
) -> web.Response:
    """One allocation of headers per answer: the stored list plus three of our own, handed to aiohttp as is."""
    headers = entry.headers
    extra = [("Cache-Status", cache_status), ("Via", VIA)]
    if age is not None:
        extra.append(("Age", str(max(0, int(age)))))
    if etag is not None:
        headers = [h for h in headers if h[0].lower() != "etag"]
        extra.append(("ETag", etag))
    conditional = "If-None-Match" in request.headers or "If-Modified-Since" in request.headers
    if conditional and entry.status == 200:
        tag = etag or _get(headers, "etag")
        if not_modified(request.headers, tag, _get(headers, "last-modified")):
            kept = [h for h in headers if h[0].lower() in _KEPT_ON_304]
            return web.Response(status=304, headers=kept + extra)
    return web.Response(status=entry.status, headers=headers + extra, body=entry.body if body is None else body)


def _get(headers: list[tuple[str, str]], lower_name: str) -> str | None:
    for k, v in headers:
        if k.lower() == lower_name:
            return v
    return None
