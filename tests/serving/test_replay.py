"""Replays (serving/replay.py): a fast-lane answer written again for the very same request bytes, and only while the
decision would give that very answer: through real sockets, a clock the test moves, purges, refills, evictions,
a rules reload and a Redis that goes away."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from proxy.cache.memory import MemoryTier
from proxy.config.rules import load_rules
from proxy.config.settings import Config, MemoryConfig
from proxy.serving.replay import MAX_REPLAYS, Basis, Replays
from tests.support.factories import ProxyFactory, RedisFactory
from tests.support.lanes import PLAYER_RULES as RULES
from tests.support.lanes import fast_lane_only  # noqa: F401 - a fixture: these tests are the fast lane's own
from tests.support.raw_http import counter, exchange, fast_hits, raw_get, undated
from tests.support.redis_tier import with_redis
from tests.support.upstream import Upstream
from tests.support.waiting import until


async def _replays(http: aiohttp.ClientSession, admin: str) -> float:
    return await counter(http, admin, "sidecache_fast_lane_replays")


def _status(answer: bytes) -> str:
    found = re.search(rb"\r\nCache-Status: ([^\r]*)", answer)
    assert found is not None
    return found.group(1).decode()


def _age(answer: bytes) -> int:
    found = re.search(rb"\r\nAge: (\d+)", answer)
    assert found is not None
    return int(found.group(1))


async def test_a_kept_answer_is_written_again_only_while_a_fresh_decision_gives_the_same(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Age and the ttl move with the clock: the answer after a second is decided again, never replayed."""
    upstream.reply("/api/player/7", body=b'{"player": 7}', headers={"ETag": '"v1"'})
    now = [1_000_000.25]
    proxy = await make_proxy(RULES, clock=lambda: now[0])
    request = raw_get("/api/player/7")
    await exchange(proxy.proxy_url, request)  # the miss fills the entry
    now[0] += 0.25  # within the first second of its age (at exactly 0.0, the ttl turns 59 the next instant)
    first = await exchange(proxy.proxy_url, request)  # a fast-lane hit, kept
    replays = await _replays(http, proxy.admin_url)
    again = await exchange(proxy.proxy_url, request)
    assert await _replays(http, proxy.admin_url) == replays + 1
    assert again == first and _status(again) == "sidecache; hit; ttl=59" and _age(again) == 0
    now[0] += 1.5
    later = await exchange(proxy.proxy_url, request)
    assert await _replays(http, proxy.admin_url) == replays + 1  # decided again: Age and ttl moved
    assert _age(later) == 1 and _status(later) == "sidecache; hit; ttl=58"
    slow = await exchange(proxy.proxy_url, request[:10], request[10:])  # aiohttp's answer at the same instant
    assert undated(later) == undated(slow)
    assert await exchange(proxy.proxy_url, request) == later
    assert await _replays(http, proxy.admin_url) == replays + 2
    now[0] += 60  # past the ttl: no longer a hit at all
    expired = await exchange(proxy.proxy_url, request)
    assert "fwd=" in _status(expired) and "; hit" not in _status(expired)
    assert upstream.hits["/api/player/7"] == 2


async def test_a_purge_or_a_refill_is_never_hidden_by_a_kept_answer(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/5", body=b'{"v": 1}')
    proxy = await make_proxy(RULES)
    request = raw_get("/api/player/5")
    for _ in range(3):  # miss, hit (kept), replay
        await exchange(proxy.proxy_url, request)
    upstream.reply("/api/player/5", body=b'{"v": 2}')
    async with http.post(proxy.admin_url + "/purge", json={"url": "/api/player/5"}) as r:
        assert (await r.json())["purged"] == 1
    after = [await exchange(proxy.proxy_url, request) for _ in range(3)]
    assert "fwd=miss" in _status(after[0]) and upstream.hits["/api/player/5"] == 2
    assert all(a.endswith(b'{"v": 2}') for a in after)


async def test_an_evicted_entry_is_never_answered_from_a_kept_answer(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """The kept answer holds its entry weakly and checks the memory tier still holds it: one entry at most here."""
    upstream.reply("/api/player/1", body=b'{"p": 1}')
    upstream.reply("/api/player/2", body=b'{"p": 2}')
    proxy = await make_proxy(RULES, config=Config(memory=MemoryConfig(max_entries=1)))
    one, two = raw_get("/api/player/1"), raw_get("/api/player/2")
    for _ in range(2):  # miss, hit (kept)
        await exchange(proxy.proxy_url, one)
    await exchange(proxy.proxy_url, two)  # its fill evicts player 1
    answer = await exchange(proxy.proxy_url, one)
    assert "fwd=miss" in _status(answer) and upstream.hits["/api/player/1"] == 2


async def test_a_rules_reload_drops_every_kept_answer(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    upstream.reply("/api/player/3", body=b'{"p": 3}')
    proxy = await make_proxy(RULES)
    request = raw_get("/api/player/3")
    for _ in range(3):
        assert "fwd=bypass" not in _status(await exchange(proxy.proxy_url, request))
    assert upstream.hits["/api/player/3"] == 1
    memory = proxy.memory
    reserved = memory.reserved
    rules = tmp_path / "reloaded.toml"
    rules.write_text('[[route]]\nname = "team"\nmatch = "GET /api/team/{id}"\nttl = "60s"\n')
    assert proxy.handler is not None
    proxy.handler.use_rules(load_rules(rules))  # what a reload does: the player route is gone
    assert memory.reserved < reserved  # the kept answers' bytes given back
    before = await fast_hits(http, proxy.admin_url)
    gone = await exchange(proxy.proxy_url, request)
    assert "; hit" not in _status(gone) and await fast_hits(http, proxy.admin_url) == before


async def test_redis_going_away_shows_in_the_next_hit_of_a_kept_answer(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession,
        redis_factory: RedisFactory) -> None:
    server = redis_factory()
    proxy = await make_proxy(RULES, config=with_redis(server.url()))
    request = raw_get("/api/player/8")
    answers = [await exchange(proxy.proxy_url, request) for _ in range(3)]  # miss, hit (kept), replay
    assert all(re.fullmatch(r"sidecache; hit; ttl=\d+", _status(a)) for a in answers[1:])
    server.kill()

    async def degraded() -> bool:
        await exchange(proxy.proxy_url, raw_get("/api/player/other"))  # a miss asks Redis and finds it gone
        return proxy.tiers.degraded

    await until(degraded, timeout=5.0)
    assert _status(await exchange(proxy.proxy_url, request)).endswith("detail=redis-unavailable")


def test_kept_answers_are_bounded_and_counted_in_the_memory_budget() -> None:
    memory = MemoryTier(max_entries=10, max_bytes=64 * 1024 * 32, max_entry_bytes=1024, clock=lambda: 0.0)
    replays = Replays(memory.reserve, memory.max_bytes // 32)
    basis = Basis((), 0.0, False, 0, "GET", "/", "r", "hit", 200, 10)
    answer = b"x" * 1000
    for i in range(200):
        replays.keep(f"GET /{i} HTTP/1.1\r\n\r\n".encode(), answer, basis)
    assert replays.bytes <= replays.max_bytes and memory.reserved == replays.bytes
    assert 0 < len(replays) < 200  # the oldest went first
    assert replays.get(b"GET /0 HTTP/1.1\r\n\r\n") is None and replays.get(b"GET /199 HTTP/1.1\r\n\r\n") is not None
    replays.keep(b"GET /big HTTP/1.1\r\n\r\n", b"y" * replays.max_bytes, basis)  # larger than the whole budget
    assert replays.get(b"GET /big HTTP/1.1\r\n\r\n") is None
    replays.clear()
    assert len(replays) == 0 and memory.reserved == 0
    many = Replays(memory.reserve, 1 << 30)
    for i in range(MAX_REPLAYS + 10):
        many.keep(str(i).encode(), b"", basis)
    assert len(many) == MAX_REPLAYS and memory.reserved == many.bytes


async def test_head_and_http_1_0_are_kept_apart_and_written_again_as_first_answered(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """The method and the version are part of the bytes: a HEAD is never answered with a GET's body, nor an
    HTTP/1.0 keep-alive client with an HTTP/1.1 answer."""
    upstream.reply("/api/player/6", body=b'{"p": 6}')
    now = [2_000_000.0]
    proxy = await make_proxy(RULES, clock=lambda: now[0])
    get, head = raw_get("/api/player/6"), raw_get("/api/player/6", method="HEAD")
    old = b"GET /api/player/6 HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    await exchange(proxy.proxy_url, get)  # the miss fills the entry
    now[0] += 0.25
    for request, is_head in ((head, True), (old, False), (get, False)):
        first = await exchange(proxy.proxy_url, request, head=is_head)
        replays = await _replays(http, proxy.admin_url)
        again = await exchange(proxy.proxy_url, request, head=is_head)
        assert await _replays(http, proxy.admin_url) == replays + 1
        assert again == first
    assert again.endswith(b'{"p": 6}')
    head_answer = await exchange(proxy.proxy_url, head, head=True)
    assert head_answer.endswith(b"\r\n\r\n") and b"Content-Length: 8" in head_answer
    old_answer = await exchange(proxy.proxy_url, old)
    assert old_answer.startswith(b"HTTP/1.0 200") and b"Connection: keep-alive" in old_answer
    assert upstream.hits["/api/player/6"] == 1
