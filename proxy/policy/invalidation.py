"""Which stored answers an unsafe request makes stale (RFC 9111 4.4): its own URI, and the `Location` and
`Content-Location` of its answer when they are on the same origin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from yarl import URL

from proxy.policy.cache_control import field_lines

SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1; every other method may change state


def invalidates(method: str, status: int) -> bool:
    """A method not known to be safe (M-SEARCH as much as POST), answered with a non-error status."""
    return method.upper() not in SAFE and 200 <= status < 400


def origin_of(url: str) -> str:
    """`scheme://host[:port]`, lower-case, default port left out: what two same-origin URLs share ("" for a URL
    that has none, such as one built from a malformed Host)."""
    try:
        return str(URL(url).origin()).lower()
    except ValueError:
        return ""


def invalidated_targets(target: str, response: Mapping[str, str], origins: Mapping[str, str]) -> list[str]:
    """Request targets (path and query, as sent) to drop: the request's own, then Location and Content-Location
    resolved against it, kept only when their origin is in `origins` (`origin_of` -> the path prefix it puts before
    a request target: the proxy as the client addressed it, "", or the upstream, whose own URLs an origin writes)."""
    base = URL("http://target.invalid").join(URL(target, encoded=True))
    out = [target]
    for name in ("Location", "Content-Location"):
        lines = field_lines(response, name)
        if len(lines) != 1:
            continue
        try:
            url = URL(lines[0].strip(), encoded=True)
        except ValueError:
            continue
        prefix: str | None = ""
        if url.is_absolute():
            if (prefix := origins.get(origin_of(str(url)))) is None:
                continue
        else:
            url = base.join(url)
        uri = url.raw_path_qs
        if prefix:
            if not uri.startswith(prefix + "/"):
                continue
            uri = uri[len(prefix):]
        if uri.startswith("/") and uri not in out:
            out.append(uri)
    return out
