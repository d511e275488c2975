"""Cache directives as tables: field lines combined (RFC 9110 5.3), duplicates and conflicts (RFC 9111 4.2.1),
targeted fields (RFC 9213), and what origin_policy makes of them."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.cache_control import cache_control, delta_seconds, response_directives, targeted
from proxy.policy.origin_policy import OriginPolicy, origin_policy

NOW = 1_750_000_000.0
DATE = "Sun, 15 Jun 2025 15:06:40 GMT"  # == NOW
PAST = "Sun, 15 Jun 2025 12:20:00 GMT"
FUTURE = "Mon, 16 Jun 2025 15:06:40 GMT"
TARGETS = ("Sidecache-Cache-Control", "CDN-Cache-Control")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["max-age=60"], {"max-age": "60"}),
        (["public", "s-maxage=60"], {"public": "", "s-maxage": "60"}),  # a second line counts
        (["max-age=60, max-age=1"], {"max-age": "60"}),  # a duplicate: the first occurrence
        (["max-age=1", "max-age=60"], {"max-age": "1"}),
        (['no-cache="a, b", max-age=5'], {"no-cache": "a, b", "max-age": "5"}),  # commas inside quotes
        (['extension="max-age=3600", max-age=1'], {"extension": "max-age=3600", "max-age": "1"}),
        (['max-age=1, extension="max-age=3600"'], {"max-age": "1", "extension": "max-age=3600"}),
        (['x="a\\"b", Private'], {"x": 'a"b', "private": ""}),  # quoted-pair; names are case-insensitive
        (["max-age =3600"], {}),  # no whitespace around "=" (RFC 9111 5.2)
        (["max-age= 3600"], {}),
        (["max-age='3600'"], {"max-age": "'3600'"}),  # kept, and not a delta-seconds
        ([" , ,no-store,"], {"no-store": ""}),
        ([], {}),
    ],
)
def test_cache_control_lines(lines: list[str], expected: dict[str, str]) -> None:
    assert cache_control(lines) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("60", 60), ("003600", 3600), ("0", 0), ("99999999999", 2**31), ("-1", None), ("1.5", None), ("+5", None),
     ("", None), (None, None), ("a3600", None), ("3600a", None), ("\u0663", None), ("1_0", None)],
)
def test_delta_seconds(value: str | None, expected: int | None) -> None:
    assert delta_seconds(value) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"CDN-Cache-Control": "max-age=60"}, {"max-age": "60"}),
        ({"CDN-Cache-Control": "foobar, max-age=3600"}, {"foobar": "", "max-age": "3600"}),
        ({"CDN-Cache-Control": "max-age=99999999999"}, {"max-age": str(2**31)}),
        ({"CDN-Cache-Control": 'max-age="10000"'}, {}),  # wrong type: the directive is ignored, not the field
        ({"CDN-Cache-Control": "max-age=1.5, private"}, {"private": ""}),
        ({"CDN-Cache-Control": 'ext=tok, other="s", b=?0, max-age=(1 2)'}, {"ext": "tok", "other": "s"}),
        ({"CDN-Cache-Control": 'no-cache="a", max-age=5;x=1'}, {"no-cache": "a", "max-age": "5"}),  # params ignored
        ({"CDN-Cache-Control": "max-age=10000, &&&&&"}, None),  # not a Structured Field: as if absent
        ({"CDN-Cache-Control": "MaX-aGe=3600"}, None),
        ({"CDN-Cache-Control": "max-age =100"}, None),
        ({"CDN-Cache-Control": ""}, None),
        ({"Sidecache-Cache-Control": "no-store", "CDN-Cache-Control": "max-age=60"}, {"no-store": ""}),  # first
        ({"Sidecache-Cache-Control": "&", "CDN-Cache-Control": "max-age=60"}, {"max-age": "60"}),  # first valid
        ({"Cache-Control": "max-age=60"}, None),
    ],
)
def test_targeted(headers: dict[str, str], expected: dict[str, str] | None) -> None:
    assert targeted(CIMultiDict(headers), TARGETS) == expected


def test_targeted_field_lines_are_one_dictionary_and_off_without_targets() -> None:
    h = CIMultiDict([("CDN-Cache-Control", "max-age=60"), ("CDN-Cache-Control", "must-revalidate"),
                     ("Cache-Control", "no-store")])
    assert response_directives(h, TARGETS) == ({"max-age": "60", "must-revalidate": ""}, True)
    assert response_directives(h, ()) == ({"no-store": ""}, False)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # RFC 9213: a valid targeted field replaces Cache-Control and Expires for this cache
        ({"CDN-Cache-Control": "max-age=3600"}, OriginPolicy(ttl=3600)),
        ({"Cache-Control": "no-store", "CDN-Cache-Control": "max-age=600"}, OriginPolicy(ttl=600)),
        ({"Cache-Control": "max-age=3600", "CDN-Cache-Control": "max-age=1"}, OriginPolicy(ttl=1)),
        ({"CDN-Cache-Control": "max-age=3600", "Expires": PAST, "Date": DATE}, OriginPolicy(ttl=3600)),
        ({"CDN-Cache-Control": "max-age=3600", "Expires": "0", "Date": DATE}, OriginPolicy(ttl=3600)),
        ({"CDN-Cache-Control": "max-age=0", "Expires": FUTURE, "Date": DATE}, "stale-on-arrival"),
        ({"CDN-Cache-Control": "private", "Cache-Control": "max-age=10000"}, "private"),
        ({"CDN-Cache-Control": "no-store", "Cache-Control": "max-age=10000"}, "no-store"),
        ({"CDN-Cache-Control": "no-cache", "Cache-Control": "max-age=10000", "ETag": '"e"'},
         OriginPolicy(ttl=0, revalidate=True)),
        ({"CDN-Cache-Control": "max-age=60, stale-if-error=600"}, OriginPolicy(ttl=60, stale_if_error=600)),
        ({"CDN-Cache-Control": "max-age=60, must-revalidate, stale-if-error=600"}, OriginPolicy(ttl=60)),
        ({"CDN-Cache-Control": 'max-age="10000"', "Cache-Control": "max-age=60"}, "no-freshness"),
        ({"CDN-Cache-Control": "max-age=10000, &&&&&", "Cache-Control": "no-store"}, "no-store"),  # ignored
        ({"CDN-Cache-Control": "max-age=3600", "Age": "7200"}, "stale-on-arrival"),
        ({"Sidecache-Cache-Control": "max-age=5", "CDN-Cache-Control": "max-age=3600"}, OriginPolicy(ttl=5)),
    ],
)
def test_origin_policy_with_targeted_fields(response: dict[str, str], expected: OriginPolicy | str) -> None:
    assert origin_policy(200, CIMultiDict(response), CIMultiDict(), NOW, targets=TARGETS) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([("Cache-Control", "public"), ("Cache-Control", "s-maxage=60")], OriginPolicy(ttl=60)),
        ([("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")], "no-store"),
        ([("Cache-Control", "max-age=60"), ("Cache-Control", "private")], "private"),
        ([("Cache-Control", "max-age=60, public, private")], "private"),  # conflicting: the most restrictive
        ([("Cache-Control", "max-age=60"), ("Cache-Control", "no-cache")], "no-cache-without-validator"),
        ([("Cache-Control", "max-age=60, no-cache"), ("ETag", '"e"')], OriginPolicy(ttl=0, revalidate=True)),
        ([("Cache-Control", "max-age=1800"), ("Cache-Control", "max-age=1")], OriginPolicy(ttl=1800)),  # the first
        ([("Cache-Control", "max-age=60"), ("Cache-Control", "s-maxage=30, stale-if-error=600")],
         OriginPolicy(ttl=30)),  # s-maxage from the second line: wins, and forbids stale
        ([("Cache-Control", 'extension="max-age=3600", max-age=1')], OriginPolicy(ttl=1)),
        ([("Cache-Control", "max-age=003600")], OriginPolicy(ttl=3600)),
        ([("Cache-Control", "max-age=-1")], "no-freshness"),
        ([("Cache-Control", "max-age='3600'")], "no-freshness"),
        ([("Cache-Control", "max-age=3600.5")], "no-freshness"),
        ([("Cache-Control", "max-age=2147483649")], OriginPolicy(ttl=2**31)),
    ],
)
def test_origin_policy_reads_every_cache_control_line(lines: list[tuple[str, str]],
                                                      expected: OriginPolicy | str) -> None:
    assert origin_policy(200, CIMultiDict(lines), CIMultiDict(), NOW) == expected


def test_request_cache_control_lines_combine_too() -> None:
    request = CIMultiDict([("Cache-Control", "max-age=10"), ("Cache-Control", "no-store")])
    assert origin_policy(200, CIMultiDict({"Cache-Control": "max-age=60"}), request, NOW) == "no-store"


@pytest.mark.parametrize(
    ("lines", "omit"),
    [
        ([("Cache-Control", 'no-cache="a"'), ("Cache-Control", "max-age=3600")], ("a",)),
        ([("Cache-Control", 'no-cache="A, b", max-age=3600')], ("a", "b")),
        ([("Cache-Control", "max-age=3600")], ()),
    ],
)
def test_no_cache_with_field_names_stores_all_but_those_fields(lines: list[tuple[str, str]],
                                                               omit: tuple[str, ...]) -> None:
    assert origin_policy(200, CIMultiDict(lines), CIMultiDict(), NOW) == OriginPolicy(ttl=3600, omit=omit)
