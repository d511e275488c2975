"""What an origin's own headers allow a shared cache to do (RFC 9111), for routes no rule covers.

Pure functions: the handler asks `origin_policy` whether and how long to keep an answer; rules, when a route
has one, replace all of this (the A1Betting backend sends no caching headers at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from multidict import MultiMapping

from proxy.policy.cache_status import not_stored_status
from proxy.policy.freshness import cache_control
from proxy.policy.validators import parse_http_date

# Statuses a cache may store with explicit freshness; 206 (no range support) and every 5xx are left out.
STORABLE: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414})


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """How long an origin lets a shared cache use its answer, and on what terms."""

    ttl: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    vary: tuple[str, ...] = ()  # request headers that select among stored variants, lower-case, sorted
    revalidate: bool = False  # no-cache: store, but ask the origin before every use (RFC 9111 5.2.2.4)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        return None


def vary_names(headers: MultiMapping[str]) -> tuple[str, ...] | None:
    """Vary's header names, lower-case and sorted; None for `Vary: *` (never matches a later request)."""
    names: set[str] = set()
    for value in headers.getall("Vary", ()):
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def origin_policy(
    status: int, response: MultiMapping[str], request: Mapping[str, str], now: float
) -> OriginPolicy | str:
    """The policy, or the reason the answer may not be stored (a Cache-Status detail token)."""
    req_cc = cache_control(request.get("Cache-Control"))
    cc = cache_control(response.get("Cache-Control"))
    if status not in STORABLE:
        return not_stored_status(status)
    if "no-store" in cc or "no-store" in req_cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if "Set-Cookie" in response:
        return "set-cookie"
    if "Authorization" in request and not ({"public", "s-maxage", "must-revalidate"} & cc.keys()):
        return "authorization"  # RFC 9111 3.5
    vary = vary_names(response)
    if vary is None:
        return "vary-star"
    lifetime = _seconds(cc.get("s-maxage"))
    if lifetime is None:
        lifetime = _seconds(cc.get("max-age"))
    if lifetime is None and "Expires" in response:
        expires = parse_http_date(response.get("Expires"))
        date = parse_http_date(response.get("Date")) or now
        lifetime = max(0.0, expires - date) if expires is not None else 0.0  # a bad Expires means "already"
    revalidate = "no-cache" in cc and not cc["no-cache"]  # `no-cache="field"` only restricts fields
    if lifetime is None:
        if not revalidate:
            return "no-freshness"  # heuristic freshness is off: no explicit lifetime, no storing
        lifetime = 0.0
    ttl = lifetime - (_seconds(response.get("Age")) or 0.0)  # RFC 9111 4.2.3: time already spent upstream
    if revalidate:
        if "ETag" not in response and "Last-Modified" not in response:
            return "no-cache-without-validator"
        ttl = 0.0
    elif ttl <= 0:
        return "stale-on-arrival"
    strict = {"must-revalidate", "proxy-revalidate", "s-maxage"} & cc.keys()  # 5.2.2.2, 5.2.2.8, 5.2.2.10
    return OriginPolicy(
        ttl=ttl,
        stale_while_revalidate=0.0 if strict else _seconds(cc.get("stale-while-revalidate")) or 0.0,
        stale_if_error=0.0 if strict else _seconds(cc.get("stale-if-error")) or 0.0,
        vary=vary,
        revalidate=revalidate,
    )


