"""The RFC 9211 `Cache-Status` header as a value: every decision is described once here and parsed back once here.

Parameters are written in one order (hit or fwd, fwd-status, ttl, collapsed, stored, detail, then ours), so the
same situation always gives the same bytes. RFC 9211 allows one `detail`; where several things are worth saying
(a stale answer while Redis is down) the tokens are joined with `+`.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

CACHE: Final = "sidecache"

Forward = Literal["miss", "stale", "bypass", "request", "uri-miss", "vary-miss", "method", "partial"]

# Why an answer fetched from the upstream was not stored (the `detail` of a fill). `status-NNN` (a status the rule or
# RFC 9111 does not store) is written with its code, so it is kept apart: see `not_stored_status`.
NotStored = Literal[
    "set-cookie", "private", "no-store", "uncacheable-body", "too-large", "authorization", "vary-star",
    "no-freshness", "no-cache-without-validator", "stale-on-arrival", "encoded-without-vary", "head", "status",
]
# Reasons that make an answer belong to the one client that asked: collapsed waiters must ask for their own.
PERSONAL: Final[frozenset[str]] = frozenset({"set-cookie", "private", "no-store", "vary-star"})


def not_stored_status(status: int) -> str:
    """The detail token for a status that may not be stored: `status-404`."""
    return f"status-{status}"


def reason_kind(token: str) -> str:
    """`status-404` -> `status`; other reasons are their own kind (for the `NotStored` literal)."""
    return "status" if token.startswith("status-") else token


class CacheStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One `Cache-Status` member for this cache; `str()` is the header value, `parse()` reads one back."""

    hit: bool = False
    fwd: str | None = None
    fwd_status: int | None = None
    ttl: int | None = None
    collapsed: bool = False
    stored: bool = False
    detail: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # our own parameters: batch-size, cached, fetched

    def __str__(self) -> str:
        if self.hit and not (self.fwd or self.detail or self.extra) and self.ttl is not None:
            return f"{CACHE}; hit; ttl={self.ttl}"  # the hit path's one shape, without the general assembly
        parts = [CACHE]
        if self.hit:
            parts.append("hit")
        if self.fwd is not None:
            parts.append(f"fwd={self.fwd}")
        if self.fwd_status is not None:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.collapsed:
            parts.append("collapsed")
        if self.stored:
            parts.append("stored")
        if self.detail:
            parts.append("detail=" + "+".join(self.detail))
        parts += [f"{k}={v}" for k, v in self.extra]
        return "; ".join(parts)

    def with_detail(self, token: str) -> CacheStatus:
        """The same status with one more detail token (joined with `+`, as RFC 9211 has one `detail`)."""
        return msgspec.structs.replace(self, detail=(*self.detail, token))

    @property
    def outcome(self) -> str:
        """The metrics label of what happened (`sidecache_requests_total{outcome}`)."""
        if self.hit:
            return "hit"
        if self.collapsed:
            return "collapsed"
        if (self.fwd == "stale" and self.fwd_status is None) or "stale-if-error" in self.detail:
            return "stale"
        if self.fwd == "bypass":
            return "bypass"
        if "batched" in self.detail or "batch-merged" in self.detail:
            return "batched"
        return "miss"

    @classmethod
    def parse(cls, text: str) -> CacheStatus | None:
        """Our member of a `Cache-Status` field (the last one named `sidecache`), or None when there is none."""
        for member in reversed(text.split(",")):
            tokens = [t.strip() for t in member.split(";")]
            if tokens[0] != CACHE:
                continue
            kw: dict[str, object] = {}
            extra: list[tuple[str, str]] = []
            for token in tokens[1:]:
                name, eq, value = token.partition("=")
                if not eq:
                    if name in ("hit", "collapsed", "stored"):
                        kw[name] = True
                elif name == "fwd":
                    kw["fwd"] = value
                elif name in ("fwd-status", "ttl") and value.lstrip("-").isdigit():
                    kw[name.replace("-", "_")] = int(value)
                elif name == "detail":
                    kw["detail"] = tuple(value.split("+"))
                else:
                    extra.append((name, value))
            return cls(extra=tuple(extra), **kw)  # type: ignore[arg-type]
        return None


_HITS: dict[int, CacheStatus] = {}


def hit(ttl: int) -> CacheStatus:
    """A fresh hit with `ttl` seconds left: the hit path's one status, made once per distinct ttl."""
    status = _HITS.get(ttl)
    if status is None:
        if len(_HITS) > 4096:
            _HITS.clear()
        status = _HITS[ttl] = CacheStatus(hit=True, ttl=ttl)
    return status
