"""What an origin's own headers allow a shared cache to do (RFC 9111), for routes no rule covers.

Pure functions: the handler asks `origin_policy` whether and how long to keep an answer; rules, when a route
has one, replace all of this (the A1Betting backend sends no caching headers at all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from multidict import MultiMapping

from proxy.policy.age import initial_age, parse_age
from proxy.policy.cache_control import Directives, cache_control, delta_seconds, field_lines, response_directives
from proxy.policy.cache_status import not_stored_status
from proxy.policy.validators import parse_http_date

# Heuristically cacheable (RFC 9110 15.1): stored without explicit freshness when no-cache asks for revalidation.
HEURISTIC: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})


def storable_status(status: int) -> bool:
    """Any final status may be stored with explicit freshness (RFC 9111 3), except a 206 (we do not combine
    partial content) and a 304 (it updates an entry, it is never one)."""
    return 200 <= status <= 599 and status not in (206, 304)


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """How long an origin lets a shared cache use its answer, and on what terms."""

    ttl: float  # freshness left on arrival: the lifetime minus the age the answer already had
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    vary: tuple[str, ...] = ()  # request headers that select among stored variants, lower-case, sorted
    revalidate: bool = False  # no-cache: store, but ask the origin before every use (RFC 9111 5.2.2.4)
    age: float = field(default=0.0, compare=False)  # the corrected initial age (RFC 9111 4.2.3)
    omit: tuple[str, ...] = ()  # `no-cache="a, b"`: fields never sent from the stored copy (RFC 9111 5.2.2.4)


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


def freshness_lifetime(cc: Directives, targeted: bool, response: Mapping[str, str], now: float) -> float | None:
    """s-maxage, then max-age, then Expires minus Date (RFC 9111 4.2.1); None when the origin gave none.

    An invalid Expires, or several Expires lines, means already expired (RFC 9111 5.3); a targeted field's
    directives replace Expires too (RFC 9213 2.2)."""
    lifetime = delta_seconds(cc.get("s-maxage"))
    if lifetime is None:
        lifetime = delta_seconds(cc.get("max-age"))
    if lifetime is not None:
        return float(lifetime)
    expires_lines = [] if targeted else field_lines(response, "Expires")
    if not expires_lines:
        return None
    expires = parse_http_date(expires_lines[0], now=now) if len(expires_lines) == 1 else None
    if expires is None:
        return 0.0
    date = date_value(response, now)
    return max(0.0, expires - (now if date is None else date))


def date_value(response: Mapping[str, str], now: float | None = None) -> float | None:
    """The origin's Date, when there is exactly one and it is valid."""
    lines = field_lines(response, "Date")
    return parse_http_date(lines[0], now=now) if len(lines) == 1 else None


def explicit_lifetime(status: int, response: Mapping[str, str], now: float, targets: Sequence[str] = ()) -> float:
    """Freshness an origin gave a storable status explicitly, less the age it came with; 0 when none (or
    no-store/no-cache say it may not be reused as it is). Lets a ruled route store a status its rule did not
    list, for no longer than the origin said."""
    if not storable_status(status):
        return 0.0
    cc, targeted = response_directives(response, targets)
    if "no-store" in cc or "no-cache" in cc:
        return 0.0
    lifetime = freshness_lifetime(cc, targeted, response, now)
    if lifetime is None:
        return 0.0
    return lifetime - initial_age(parse_age(field_lines(response, "Age")), date_value(response, now), now, now)


def origin_policy(
    status: int, response: MultiMapping[str], request: Mapping[str, str], now: float, *,
    targets: Sequence[str] = (), requested_at: float | None = None,
) -> OriginPolicy | str:
    """The policy, or the reason the answer may not be stored (a Cache-Status detail token).

    `targets` lists the targeted fields (RFC 9213) that replace Cache-Control, first valid one wins; `now` is when
    the answer arrived and `requested_at` when it was asked for (the response delay counts as age)."""
    req_cc = cache_control(field_lines(request, "Cache-Control"))
    cc, targeted = response_directives(response, targets)
    if not storable_status(status):
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
    lifetime = freshness_lifetime(cc, targeted, response, now)
    revalidate = "no-cache" in cc and not cc["no-cache"]  # `no-cache="field"` only restricts fields
    if lifetime is None:
        if status not in HEURISTIC:
            return not_stored_status(status)  # storable only with explicit freshness (RFC 9111 3)
        if not revalidate:
            return "no-freshness"  # heuristic freshness is off: no explicit lifetime, no storing
        lifetime = 0.0
    age = initial_age(parse_age(field_lines(response, "Age")), date_value(response, now),
                      now if requested_at is None else requested_at, now)
    ttl = lifetime - age
    if revalidate:
        if "ETag" not in response and "Last-Modified" not in response:
            return "no-cache-without-validator"
        ttl = 0.0
    elif ttl <= 0:
        return "stale-on-arrival"
    strict = {"must-revalidate", "proxy-revalidate", "s-maxage"} & cc.keys()  # 5.2.2.2, 5.2.2.8, 5.2.2.10
    return OriginPolicy(
        ttl=ttl,
        stale_while_revalidate=0.0 if strict else delta_seconds(cc.get("stale-while-revalidate")) or 0.0,
        stale_if_error=0.0 if strict else delta_seconds(cc.get("stale-if-error")) or 0.0,
        vary=vary,
        revalidate=revalidate,
        age=age,
        omit=tuple(sorted({n.strip().lower() for n in cc.get("no-cache", "").split(",")} - {""})),
    )
