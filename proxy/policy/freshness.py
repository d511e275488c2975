"""The caching decisions, as pure functions of headers, rule and time (hishel's sans-I/O idea).

Each "why not" answer is a short token that ends up in the Cache-Status `detail` parameter.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Iterable, Mapping, Sequence

from proxy.config.rules import CompiledRule
from proxy.policy.cache_control import cache_control, field_lines, response_directives
from proxy.policy.cache_status import not_stored_status
from proxy.policy.entry import CachedResponse
from proxy.policy.origin_policy import explicit_lifetime

__all__ = ["cache_control"]  # parsed in cache_control.py; named here too, where the serving code reads it


class State(enum.Enum):
    """Where an entry stands at a given moment (RFC 9111 4.2, RFC 5861)."""

    FRESH = "fresh"
    STALE_REVALIDATE = "stale-while-revalidate"  # serve now, refresh in the background
    STALE_IF_ERROR = "stale-if-error"  # only if the refresh fails
    EXPIRED = "expired"


def state(entry: CachedResponse, now: float) -> State:
    age = now - entry.stored_at
    if age < entry.ttl:
        return State.FRESH
    over = age - entry.ttl
    if over < entry.stale_while_revalidate:
        return State.STALE_REVALIDATE
    if over < entry.stale_if_error:
        return State.STALE_IF_ERROR
    return State.EXPIRED


def hit_unchanged_until(entry: CachedResponse, now: float) -> float:
    """The instant a fresh hit answered at `now` would first read differently: its Age or its Cache-Status ttl
    turns a whole second, or the entry is fresh no more (a millisecond early, for float rounding). Before it,
    the same request gets the same answer from the same entry (serving/replay.py)."""
    age = now - entry.stored_at
    if age < 0:
        return now  # a clock that went back: no promise
    left = entry.ttl - age
    return min(now + 1 - (age - math.floor(age)), now + (left - math.floor(left)), entry.stored_at + entry.ttl) - 0.001


def client_asks_revalidation(headers: Mapping[str, str]) -> bool:
    """The client asks for an answer checked with the origin: `Cache-Control: no-cache` or `max-age=0`, or
    `Pragma: no-cache` from HTTP/1.0 (RFC 9111 5.2.1.4, 5.4)."""
    cc = cache_control(field_lines(headers, "Cache-Control"))
    return "no-cache" in cc or cc.get("max-age") == "0" or (not cc and headers.get("Pragma") == "no-cache")


def client_wants_revalidation(headers: Mapping[str, str], rule: CompiledRule) -> bool:
    """The client's `no-cache`, honoured only where the rule says so: by default a frontend must not be able to
    defeat the cache by accident (RFC 9111 5.2.1 lets a cache decide)."""
    return rule.route.client_no_cache != "ignore" and client_asks_revalidation(headers)


def usable_on_error(entry: CachedResponse, now: float) -> bool:
    """Within the entry's stale-if-error window, so an upstream failure can be answered from it (RFC 5861 4)."""
    return now - entry.stored_at < entry.ttl + entry.stale_if_error


def private_request_reason(headers: Mapping[str, str], rule: CompiledRule) -> str | None:
    """Why a request's answer must not be shared across users, or None (RFC 9111 3.5)."""
    if rule.route.share == "all-users":
        return None
    if "Authorization" in headers:
        return "authorization"
    if "Cookie" in headers:
        return "cookie"
    return None


def unstorable_reason(status: int, headers: Mapping[str, str], body: bytes, rule: CompiledRule, *,
                      targets: Sequence[str] = (), now: float | None = None) -> str | None:
    """Why a complete upstream response may not be stored under this rule, or None.

    A status the rule does not list (a 5xx included) is stored only when the origin gave it explicit freshness
    (RFC 9111 3), and then for no longer than that (`rule_ttl`). `targets`: the targeted fields (RFC 9213)
    that replace Cache-Control here."""
    if status not in rule.route.cache_status and explicit_lifetime(status, headers, _now(now), targets) <= 0:
        return not_stored_status(status)
    if rule.route.uncacheable_bodies and body.strip().decode("utf-8", "replace") in rule.route.uncacheable_bodies:
        return "uncacheable-body"
    if rule.route.share == "all-users":
        return None  # the rule overrides the origin, as nginx's proxy_ignore_headers does; Set-Cookie is stripped
    if "Set-Cookie" in headers:
        return "set-cookie"
    cc, _ = response_directives(headers, targets)
    if "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    return None


def rule_ttl(status: int, headers: Mapping[str, str], rule: CompiledRule, *, targets: Sequence[str] = (),
             now: float | None = None) -> float:
    """The freshness a ruled answer is stored with: the rule's ttl, `negative_ttl` for statuses other than 200,
    and no more than the origin's explicit freshness for a status the rule does not list."""
    r = rule.route
    ttl = min(r.ttl, r.negative_ttl) if status != 200 else float(r.ttl)
    if status not in r.cache_status:
        ttl = min(ttl, explicit_lifetime(status, headers, _now(now), targets))
    return ttl


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def stored_headers(headers: Iterable[tuple[str, str]], omit: Iterable[str] = ()) -> list[tuple[str, str]]:
    """What of a response's headers goes into the cache: never a cookie, never a per-response length or age (the
    origin's Date is kept apart, in the entry), nor the lower-case names in `omit`."""
    drop = {"set-cookie", "content-length", "age", "date", *omit}
    return [(k, v) for k, v in headers if k.lower() not in drop]
