"""RFC 9111 for routes without a rule: what the origin's headers allow, as a table."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.policy.keys import variant_key
from proxy.policy.origin_policy import OriginPolicy, origin_policy

NOW = 1_750_000_000.0
DATE = "Sun, 15 Jun 2025 15:06:40 GMT"  # == NOW
IN_60 = "Sun, 15 Jun 2025 15:07:40 GMT"


@pytest.mark.parametrize(
    ("status", "response", "request_headers", "expected"),
    [
        (200, {"Cache-Control": "max-age=60"}, {}, OriginPolicy(ttl=60)),
        (200, {"Cache-Control": "max-age=60, s-maxage=30"}, {}, OriginPolicy(ttl=30)),  # s-maxage wins
        (200, {"Expires": IN_60, "Date": DATE}, {}, OriginPolicy(ttl=60)),
        (200, {"Expires": "0"}, {}, "stale-on-arrival"),
        (200, {"Cache-Control": "max-age=60", "Age": "20"}, {}, OriginPolicy(ttl=40)),
        (200, {"Cache-Control": "max-age=60", "Age": "90"}, {}, "stale-on-arrival"),
        (200, {}, {}, "no-freshness"),  # heuristic freshness is off
        (200, {"Cache-Control": "public"}, {}, "no-freshness"),
        (200, {"Cache-Control": "max-age=60, no-store"}, {}, "no-store"),
        (200, {"Cache-Control": "max-age=60"}, {"Cache-Control": "no-store"}, "no-store"),
        (200, {"Cache-Control": "max-age=60, private"}, {}, "private"),
        (200, {"Cache-Control": "max-age=60", "Set-Cookie": "a=1"}, {}, "set-cookie"),
        (200, {"Cache-Control": "max-age=60"}, {"Authorization": "Bearer x"}, "authorization"),
        (200, {"Cache-Control": "max-age=60, public"}, {"Authorization": "Bearer x"}, OriginPolicy(ttl=60)),
        (200, {"Cache-Control": "s-maxage=60"}, {"Authorization": "Bearer x"}, OriginPolicy(ttl=60)),
        (200, {"Cache-Control": "max-age=60", "Vary": "*"}, {}, "vary-star"),
        (200, {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding, accept"}, {},
         OriginPolicy(ttl=60, vary=("accept", "accept-encoding"))),
        (200, {"Cache-Control": "max-age=60, stale-while-revalidate=30, stale-if-error=600"}, {},
         OriginPolicy(ttl=60, stale_while_revalidate=30, stale_if_error=600)),
        (200, {"Cache-Control": "max-age=60, must-revalidate, stale-if-error=600"}, {}, OriginPolicy(ttl=60)),
        (200, {"Cache-Control": "s-maxage=60, stale-if-error=600"}, {}, OriginPolicy(ttl=60)),
        (200, {"Cache-Control": "no-cache", "ETag": '"v1"'}, {}, OriginPolicy(ttl=0, revalidate=True)),
        (200, {"Cache-Control": "no-cache"}, {}, "no-cache-without-validator"),
        (404, {"Cache-Control": "max-age=60"}, {}, OriginPolicy(ttl=60)),
        (500, {"Cache-Control": "max-age=60"}, {}, OriginPolicy(ttl=60)),  # explicit freshness: any final status
        (206, {"Cache-Control": "max-age=60"}, {}, "status-206"),
        (200, {"Cache-Control": "max-age=abc"}, {}, "no-freshness"),
    ],
)
def test_origin_policy(status: int, response: dict[str, str], request_headers: dict[str, str],
                       expected: OriginPolicy | str) -> None:
    assert origin_policy(status, CIMultiDict(response), CIMultiDict(request_headers), NOW) == expected


def test_variants_differ_by_the_named_headers_only() -> None:
    vary = ("accept-encoding",)
    gz = variant_key("", vary, CIMultiDict({"Accept-Encoding": "gzip,  br", "X": "1"}))
    assert gz == variant_key("", vary, CIMultiDict({"Accept-Encoding": "gzip, br"}))
    assert gz != variant_key("", vary, CIMultiDict({}))
