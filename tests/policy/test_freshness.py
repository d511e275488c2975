"""The pure caching decisions, as tables (hishel style): freshness state, shareability, storability."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from multidict import CIMultiDict

from proxy.config.rules import CompiledRule, load_rules
from proxy.policy.entry import CachedResponse, decode, encode
from proxy.policy.freshness import (
    State,
    cache_control,
    hit_unchanged_until,
    private_request_reason,
    rule_ttl,
    state,
    stored_headers,
    unstorable_reason,
    usable_on_error,
)


def entry(ttl: float = 60, swr: float = 0, sie: float = 0) -> CachedResponse:
    return CachedResponse(status=200, headers=[], body=b"x", stored_at=1000.0, ttl=ttl,
                          stale_while_revalidate=swr, stale_if_error=sie)


@pytest.mark.parametrize(
    ("age", "swr", "sie", "expected", "on_error"),
    [
        (0, 0, 0, State.FRESH, True),
        (59.9, 0, 0, State.FRESH, True),
        (60, 0, 0, State.EXPIRED, False),
        (60, 30, 0, State.STALE_REVALIDATE, False),
        (89.9, 30, 0, State.STALE_REVALIDATE, False),
        (90, 30, 0, State.EXPIRED, False),
        (60, 0, 600, State.STALE_IF_ERROR, True),
        (70, 30, 600, State.STALE_REVALIDATE, True),
        (100, 30, 600, State.STALE_IF_ERROR, True),
        (660, 30, 600, State.EXPIRED, False),
    ],
)
def test_state(age: float, swr: float, sie: float, expected: State, on_error: bool) -> None:
    e = entry(swr=swr, sie=sie)
    assert state(e, 1000.0 + age) is expected
    assert usable_on_error(e, 1000.0 + age) is on_error


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompiledRule]:
    path: Path = tmp_path_factory.mktemp("fresh") / "r.toml"
    path.write_text("""
[[route]]
name = "private"
match = "GET /a"
ttl = "1m"

[[route]]
name = "shared"
match = "GET /b"
ttl = "1m"
share = "all-users"
cache_status = [200, 404]
uncacheable_bodies = ["null"]
""")
    return load_rules(path).by_name


@pytest.mark.parametrize(
    ("rule", "headers", "reason"),
    [
        ("private", {}, None),
        ("private", {"Authorization": "Bearer x"}, "authorization"),
        ("private", {"Cookie": "a=1"}, "cookie"),
        ("shared", {"Authorization": "Bearer x", "Cookie": "a=1"}, None),
    ],
)
def test_private_request_reason(rules: dict[str, CompiledRule], rule: str, headers: dict[str, str],
                                reason: str | None) -> None:
    assert private_request_reason(CIMultiDict(headers), rules[rule]) == reason


@pytest.mark.parametrize(
    ("rule", "status", "headers", "body", "reason"),
    [
        ("private", 200, {}, b"{}", None),
        ("private", 404, {}, b"{}", "status-404"),
        ("private", 500, {}, b"{}", "status-500"),
        ("private", 200, {"Set-Cookie": "a=1"}, b"{}", "set-cookie"),
        ("private", 200, {"Cache-Control": "max-age=60, Private"}, b"{}", "private"),
        ("private", 200, {"Cache-Control": "no-store"}, b"{}", "no-store"),
        ("shared", 200, {"Set-Cookie": "a=1", "Cache-Control": "no-store"}, b"{}", None),
        ("shared", 404, {}, b"{}", None),
        ("shared", 503, {}, b"{}", "status-503"),
        ("shared", 200, {}, b" null\n", "uncacheable-body"),
        ("private", 200, {}, b"null", None),
    ],
)
def test_unstorable_reason(rules: dict[str, CompiledRule], rule: str, status: int, headers: dict[str, str],
                           body: bytes, reason: str | None) -> None:
    assert unstorable_reason(status, CIMultiDict(headers), body, rules[rule]) == reason


def test_cache_control_parsing() -> None:
    assert cache_control('max-age=60, s-maxage="30", No-Store, private="x"') == {
        "max-age": "60", "s-maxage": "30", "no-store": "", "private": "x"
    }
    assert cache_control(None) == {}


def test_stored_headers_never_keep_cookies_or_lengths() -> None:
    assert stored_headers([("Set-Cookie", "a"), ("content-length", "3"), ("Age", "4"), ("Date", "x"),
                           ("Content-Type", "application/json")]) == [("Content-Type", "application/json")]


def test_entry_round_trips_and_rejects_other_versions() -> None:
    e = CachedResponse(status=200, headers=[("A", "b")], body=b"\x00\xff", stored_at=1.5, ttl=2, tags=["t"],
                       route="r")
    assert decode(encode(e)) == e
    assert decode(b"\x92\x02\x90") is None  # format version 2 from some future sidecache
    assert decode(b"garbage") is None


@pytest.mark.parametrize(
    ("rule", "status", "headers", "reason", "ttl"),
    [
        ("private", 500, {"Cache-Control": "max-age=5"}, None, 5),  # the origin's explicit freshness
        ("private", 503, {"Cache-Control": "max-age=3600"}, None, 30),  # capped at negative_ttl
        ("private", 302, {"Expires": "Sun, 15 Jun 2025 15:07:40 GMT", "Date": "Sun, 15 Jun 2025 15:06:40 GMT"},
         None, 30),
        ("private", 500, {"Cache-Control": "max-age=5", "Age": "5"}, "status-500", 0),  # none left
        ("private", 500, {"Cache-Control": "max-age=60", "Date": "Sun, 15 Jun 2025 15:05:30 GMT"}, "status-500", 0),
        ("private", 500, {"Cache-Control": "max-age=100", "Date": "Sun, 15 Jun 2025 15:05:30 GMT"}, None, 30),
        ("private", 500, {"Cache-Control": "max-age=0"}, "status-500", 0),
        ("private", 500, {"Cache-Control": "max-age=60, no-cache"}, "status-500", 0),
        ("private", 206, {"Cache-Control": "max-age=60"}, "status-206", 0),
        ("private", 500, {"CDN-Cache-Control": "max-age=5"}, None, 5),  # a targeted field counts
        ("private", 200, {"Cache-Control": "private", "CDN-Cache-Control": "max-age=5"}, None, 60),
        ("private", 200, {"Cache-Control": "max-age=60", "CDN-Cache-Control": "no-store"}, "no-store", 60),
        ("private", 200, {}, None, 60),
        ("shared", 404, {}, None, 30),
    ],
)
def test_ruled_storage_of_statuses_the_rule_does_not_list(rules: dict[str, CompiledRule], rule: str, status: int,
                                                          headers: dict[str, str], reason: str | None,
                                                          ttl: float) -> None:
    targets = ("CDN-Cache-Control",)
    now = 1_750_000_000.0
    assert unstorable_reason(status, CIMultiDict(headers), b"{}", rules[rule], targets=targets, now=now) == reason
    if reason is None:
        assert rule_ttl(status, CIMultiDict(headers), rules[rule], targets=targets, now=now) == ttl


def test_entries_of_the_previous_layout_still_decode() -> None:
    e = CachedResponse(status=200, headers=[], body=b"x", stored_at=1.0, ttl=2, date="Sun, 15 Jun 2025 15:06:40 GMT")
    old = msgspec.msgpack.encode([1, [200, [], b"x", 1.0, 2.0, 0.0, 0.0, [], "", [], 0.0]])  # before `date`
    assert decode(old) == msgspec.structs.replace(e, date="")
    assert decode(encode(e)) == e


@pytest.mark.parametrize(
    ("ttl", "age", "until_age"),
    [
        (60, 0.25, 1.0),  # Age turns 1 (and the ttl 58) at an age of 1 s
        (60, 59.5, 60.0),  # the last second: freshness ends with it
        (60.5, 0.25, 0.5),  # a fractional ttl: its whole seconds turn before Age's
        (0.8, 0.3, 0.8),  # fresh for less than a second
        (60, 0.0, 0.0),  # exactly 60 s left: the next instant reads 59
    ],
)
def test_a_hit_reads_the_same_until_its_age_or_ttl_turns_a_second_or_it_goes_stale(
        ttl: float, age: float, until_age: float) -> None:
    e = entry(ttl=ttl)
    now = e.stored_at + age
    until = hit_unchanged_until(e, now)
    assert until == pytest.approx(e.stored_at + until_age - 0.001)
    if until > now:  # just before it: the same Age, ttl and state as at `now`
        before = until - 1e-6
        assert (int(before - e.stored_at), int(e.expires_at - before)) == (int(age), int(e.expires_at - now))
        assert state(e, before) is State.FRESH


def test_a_clock_that_went_back_promises_nothing() -> None:
    e = entry()
    assert hit_unchanged_until(e, e.stored_at - 5) == e.stored_at - 5
