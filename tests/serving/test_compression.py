"""Compressed answers, as the backend gives them (issue 14): a gzip copy made once when an entry is stored, sent
to clients that accept it, with Vary: Accept-Encoding and a weak ETag; everyone else gets the identity bytes."""

from __future__ import annotations

import gzip

import aiohttp
import msgspec

from tests.support.client import Answer, get
from tests.support.factories import ProxyFactory
from tests.support.upstream import Upstream

RULES = """
[[route]]
name = "player"
match = "GET /players/{name}"
ttl = "5m"
"""
BODY = b'{"stats": "' + b"0123456789" * 800 + b'"}'


async def raw_get(url: str, **headers: str) -> Answer:
    """What crossed the wire, undecoded."""
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as http:
        return await get(http, url, headers=headers)


async def test_a_stored_answer_goes_gzip_to_those_who_accept_it(make_proxy: ProxyFactory,
                                                                upstream: Upstream) -> None:
    upstream.reply("/players/judge", body=BODY)
    proxy = await make_proxy(RULES)
    url = proxy.proxy_url + "/players/judge"
    await raw_get(url)
    assert upstream.seen[-1].headers["Accept-Encoding"] == "identity"  # one stored body for every client
    status, h, coded = await raw_get(url, **{"Accept-Encoding": "gzip, br"})
    assert (status, h["Content-Encoding"], gzip.decompress(coded)) == (200, "gzip", BODY)
    assert int(h["Content-Length"]) == len(coded) < len(BODY) // 5
    assert "Accept-Encoding" in h["Vary"] and h["ETag"].startswith('W/"')
    status, h, plain = await raw_get(url)
    assert (status, plain, "Content-Encoding" in h) == (200, BODY, False)
    assert "Accept-Encoding" in h["Vary"] and not h["ETag"].startswith("W/")
    status, _, _ = await raw_get(url, **{"Accept-Encoding": "gzip", "If-None-Match": h["ETag"]})
    assert status == 304  # weak comparison: either representation's tag
    status, h, part = await raw_get(url, **{"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert (status, part, "Content-Encoding" in h) == (206, BODY[:10], False)  # ranges of the identity bytes
    assert upstream.hits["/players/judge"] == 1


async def test_bodies_rewritten_per_client_go_gzip_too_each_with_its_own_ids(make_proxy: ProxyFactory,
                                                                              upstream: Upstream) -> None:
    text = b'"text": "' + b"y" * 5000 + b'"'
    upstream.reply("/props/p1", body=b'{"prop_id": "p1", ' + text + b"}")
    proxy = await make_proxy('[[route]]\nname = "prop"\nmatch = "GET /props/{prop_id}"\nttl = "5m"\n'
                             'key = ["query.player"]\necho = ["prop_id"]\n')
    await raw_get(proxy.proxy_url + "/props/p1?player=j")
    seen = {}
    for prop in ("p2", "p3", "p2", "p1"):  # p2 twice: the second is the copy made for the first
        _, h, coded = await raw_get(proxy.proxy_url + f"/props/{prop}?player=j", **{"Accept-Encoding": "gzip"})
        assert h["Content-Encoding"] == "gzip" and "Accept-Encoding" in h["Vary"] and h["ETag"].startswith('W/"')
        body = gzip.decompress(coded)
        assert msgspec.json.decode(body)["prop_id"] == prop and b"y" * 5000 in body and len(coded) < len(body) // 5
        _, plain_h, plain = await raw_get(proxy.proxy_url + f"/props/{prop}?player=j")
        assert plain == body and "Content-Encoding" not in plain_h and plain_h["ETag"] == h["ETag"][2:]
        assert seen.setdefault(prop, coded) == coded
    assert upstream.hits["/props/p1"] == 1 and len(upstream.seen) == 1
