"""Cold misses the fast lane leads itself (`ProxyHandler.fast`, serving/parking.py; with Redis too): the same bytes
the slow path's leader gets, one upstream call however many wait on it, failures and too-large answers handled as the
slow path handles them, and nothing stored that the slow path would not store."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import redis.asyncio as aioredis

from proxy.app import Sidecar
from proxy.config.settings import Config, MemoryConfig, RedisConfig
from proxy.config.units import ByteSize
from tests.conftest import ProxyFactory, Upstream
from tests.support.lanes import ECHO_RULES as ECHO
from tests.support.lanes import PLAYER_RULES as RULES
from tests.support.lanes import fast_lane_only  # noqa: F401 - a fixture: leading misses is the fast lane's own
from tests.support.raw_http import Client, body_of, counter, exchange, header, raw_get, status_of, undated
from tests.support.waiting import until

NOW = 1_000_000.0


async def misses(http: aiohttp.ClientSession, admin: str) -> float:
    return await counter(http, admin, "sidecache_fast_lane_misses")


async def identical(url: str, path: str, n: int) -> list[bytes]:
    """n clients, each on a connection of its own, asking for path at once: what each got."""
    clients = [await Client.open(url) for _ in range(n)]
    try:
        for c in clients:
            c.writer.write(raw_get(path))
        return list(await asyncio.gather(*(c.answer() for c in clients)))
    finally:
        for c in clients:
            c.close()


async def both_leaders(url: str, whole: str, split: str, *extra: str, method: str = "GET",
                       version: str = "1.1") -> tuple[bytes, bytes]:
    """A cold request sent whole (the fast lane leads it) and one sent in two writes (aiohttp's path leads it)."""
    def request(path: str) -> bytes:
        data = raw_get(path, *extra, method=method)
        return data.replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode(), 1)

    head = method == "HEAD"
    fast = await exchange(url, request(whole), head=head)
    slow_request = request(split)
    slow = await exchange(url, slow_request[:12], slow_request[12:], head=head)
    return fast, slow


async def test_a_led_miss_gets_the_slow_path_leaders_bytes_and_is_stored_once(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    for path in ("/api/player/1", "/api/player/2"):
        upstream.reply(path, body=b'{"player": 1}', headers={"X-Origin": "yes"})
    for path in ("/api/player/c1", "/api/player/c2"):
        upstream.reply(path, body=b'{"player": 1}', headers={"Set-Cookie": "sid=leader"})
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    fast, slow = await both_leaders(proxy.proxy_url, "/api/player/1", "/api/player/2")
    assert await misses(http, proxy.admin_url) == 1  # the whole one only
    assert status_of(fast) == 200 and body_of(fast) == b'{"player": 1}'
    assert undated(fast) == undated(slow)
    for path in ("/api/player/1", "/api/player/2"):  # stored alike
        again = await exchange(proxy.proxy_url, raw_get(path))
        assert header(again, "Cache-Status").startswith("sidecache; hit")  # type: ignore[union-attr]
        assert upstream.hits[path] == 1
    fast, slow = await both_leaders(proxy.proxy_url, "/api/player/c1", "/api/player/c2")
    assert header(fast, "Set-Cookie") == "sid=leader"  # the leader's own answer, whole: its cookie is its own
    assert undated(fast) == undated(slow)
    for path in ("/api/player/c1", "/api/player/c2"):  # never stored: the next asks the origin again
        again = await exchange(proxy.proxy_url, raw_get(path))
        assert "set-cookie" in (header(again, "Cache-Status") or "")
        assert upstream.hits[path] == 2


async def test_a_led_miss_answers_head_and_http_1_0_as_the_slow_path_does(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    for n, (method, version) in enumerate((("HEAD", "1.1"), ("GET", "1.0"), ("HEAD", "1.0"))):
        whole, split = f"/api/player/h{n}", f"/api/player/s{n}"
        for path in (whole, split):
            upstream.reply(path, body=b'{"same": true}')
        extra = ("Connection: keep-alive",) if version == "1.0" else ()
        fast, slow = await both_leaders(proxy.proxy_url, whole, split, *extra, method=method, version=version)
        assert undated(fast) == undated(slow), (method, version)
        assert (body_of(fast) == b"") == (method == "HEAD")
    assert await misses(http, proxy.admin_url) == 3


async def test_an_echoing_rule_gives_the_leader_its_own_id_and_later_ids_theirs_from_one_call(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/props/p1", body=b'{"prop_id": "p1", "score": 7}')
    proxy = await make_proxy(ECHO)
    first = await exchange(proxy.proxy_url, raw_get("/props/p1?player=judge"))
    second = await exchange(proxy.proxy_url, raw_get("/props/p2?player=judge"))  # never seen: a hit on p1's key
    assert msgspec.json.decode(body_of(first)) == {"prop_id": "p1", "score": 7}
    assert msgspec.json.decode(body_of(second)) == {"prop_id": "p2", "score": 7}
    assert header(second, "Cache-Status").startswith("sidecache; hit")  # type: ignore[union-attr]
    assert header(first, "ETag") != header(second, "ETag")
    assert sum(upstream.hits.values()) == 1
    assert await misses(http, proxy.admin_url) == 1


async def one_led_fill(proxy: Sidecar, upstream: Upstream, http: aiohttp.ClientSession, path: str, n: int,
                       body: bytes) -> None:
    """`n` identical cold requests for `path` (answered slowly with `body`): one upstream call, one leader, the rest
    parked."""
    answers = await identical(proxy.proxy_url, path, n)
    assert upstream.hits[path] == 1
    assert {body_of(a) for a in answers} == {body}
    assert sum("collapsed" not in (header(a, "Cache-Status") or "") for a in answers) == 1  # one leader
    assert await misses(http, proxy.admin_url) == 1
    assert await counter(http, proxy.admin_url, "sidecache_fast_lane_followers") == n - 1


async def test_a_burst_of_identical_cold_requests_is_one_led_fill_and_parked_followers(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/9", body=b'{"player": 9}', delay=0.2)
    await one_led_fill(await make_proxy(RULES), upstream, http, "/api/player/9", 30, b'{"player": 9}')


async def test_a_led_miss_the_upstream_fails_is_the_same_json_and_nothing_is_stored(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, upstream_url="http://127.0.0.1:9")  # nothing listens on the discard port
    fast, slow = await both_leaders(proxy.proxy_url, "/api/player/1", "/api/player/2")
    assert status_of(fast) == 502 and msgspec.json.decode(body_of(fast))["error"] == "upstream_unavailable"
    assert undated(fast).replace(b"/1", b"/2") == undated(slow).replace(b"/1", b"/2")
    again = await exchange(proxy.proxy_url, raw_get("/api/player/1"))
    assert status_of(again) == 502  # asked again, not answered from a stored failure


async def test_a_led_answer_too_large_to_keep_streams_whole_to_its_client_from_one_call(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    big = b'{"pad": "' + b"x" * 300_000 + b'"}'
    upstream.reply("/api/player/big", body=big)
    config = Config(memory=MemoryConfig(max_entry_bytes=ByteSize(100_000)))
    proxy = await make_proxy(RULES, config=config)
    answer = await exchange(proxy.proxy_url, raw_get("/api/player/big"))
    assert status_of(answer) == 200 and body_of(answer) == big
    assert "too-large" in (header(answer, "Cache-Status") or "")
    assert upstream.hits["/api/player/big"] == 1  # streamed by aiohttp from the fill the fast lane started
    assert await misses(http, proxy.admin_url) == 0  # not answered by the fast lane itself


async def test_a_led_fill_whose_client_left_still_stores_its_answer(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.reply("/api/player/7", body=b'{"player": 7}', delay=0.2)
    proxy = await make_proxy(RULES)
    client = await Client.open(proxy.proxy_url)
    client.writer.write(raw_get("/api/player/7"))
    await client.writer.drain()
    await asyncio.sleep(0.05)
    client.close()  # gone before its answer
    await asyncio.sleep(0.3)
    again = await exchange(proxy.proxy_url, raw_get("/api/player/7"))
    assert header(again, "Cache-Status").startswith("sidecache; hit")  # type: ignore[union-attr]
    assert upstream.hits["/api/player/7"] == 1


async def test_odd_targets_get_the_same_answer_whichever_path_dispatches_them(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(RULES, clock=lambda: NOW)
    for n, odd in enumerate(("%ff", "%zz", "a%00b", "x?y=%ff", "%e2%82", "x%2Fy", "x?a=1&a=2&%=3")):
        whole, split = f"/api/player/w{n}{odd}", f"/api/player/s{n}{odd}"
        fast, slow = await asyncio.wait_for(both_leaders(proxy.proxy_url, whole, split), 5)
        assert status_of(fast) == status_of(slow), odd
        assert body_of(fast).replace(b"/w", b"/s") == body_of(slow), odd


# With Redis, the fill the lane starts asks Redis first, as the slow path asks it before it fetches (RuledLane.lead).

async def entries_in(redis: aioredis.Redis, n: int) -> None:
    """Until Redis holds n entries (the writes go on after the answers)."""
    async def held() -> bool:
        return len([k async for k in redis.scan_iter(match="*:entry:*")]) >= n
    await until(held)


async def test_with_redis_a_led_miss_is_one_call_stored_where_another_proxy_finds_it(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
        redis: aioredis.Redis) -> None:
    for path in ("/api/player/r1", "/api/player/r2"):
        upstream.reply(path, body=b'{"player": "r"}', headers={"X-Origin": "yes"})
    config = Config(redis=RedisConfig(url=redis_url))
    proxy = await make_proxy(RULES, config=config, clock=lambda: NOW)
    fast, slow = await both_leaders(proxy.proxy_url, "/api/player/r1", "/api/player/r2")
    assert await misses(http, proxy.admin_url) == 1  # led by the lane, Redis or not
    assert status_of(fast) == 200 and undated(fast) == undated(slow)
    await entries_in(redis, 2)
    other = await make_proxy(RULES, config=config, clock=lambda: NOW)  # empty memory, the same Redis
    for path in ("/api/player/r1", "/api/player/r2"):
        got = await exchange(other.proxy_url, raw_get(path))
        assert (header(got, "Cache-Status") or "").startswith("sidecache; hit")
        assert body_of(got) == b'{"player": "r"}' and header(got, "X-Origin") == "yes"
        assert upstream.hits[path] == 1


async def test_with_redis_a_cold_request_for_what_redis_holds_is_a_hit_not_a_fill(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str,
        redis: aioredis.Redis) -> None:
    upstream.reply("/api/player/r3", body=b'{"player": 3}')
    config = Config(redis=RedisConfig(url=redis_url))
    first = await make_proxy(RULES, config=config, clock=lambda: NOW)
    await exchange(first.proxy_url, raw_get("/api/player/r3"))
    await entries_in(redis, 1)
    other = await make_proxy(RULES, config=config, clock=lambda: NOW)
    got = await exchange(other.proxy_url, raw_get("/api/player/r3"))  # whole: the lane sees it first
    assert status_of(got) == 200 and body_of(got) == b'{"player": 3}'
    assert (header(got, "Cache-Status") or "").startswith("sidecache; hit")  # as the slow path answers it
    assert upstream.hits["/api/player/r3"] == 1
    assert await misses(http, other.admin_url) == 0  # the slow path answered it, from what Redis held


async def test_with_redis_a_burst_of_identical_cold_requests_is_one_led_fill_and_parked_followers(
        make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_url: str) -> None:
    upstream.reply("/api/player/r9", body=b'{"player": 9}', delay=0.2)
    proxy = await make_proxy(RULES, config=Config(redis=RedisConfig(url=redis_url)))
    await one_led_fill(proxy, upstream, http, "/api/player/r9", 20, b'{"player": 9}')


async def test_with_redis_a_led_miss_another_proxy_is_fetching_waits_for_its_copy(
        make_proxy: ProxyFactory, upstream: Upstream, redis_url: str) -> None:
    upstream.reply("/api/player/r5", body=b'{"player": 5}', delay=0.3, headers={"X-Origin": "yes"})
    config = Config(redis=RedisConfig(url=redis_url))
    first, second = await make_proxy(RULES, config=config), await make_proxy(RULES, config=config)
    leader = asyncio.ensure_future(exchange(first.proxy_url, raw_get("/api/player/r5")))
    await until(lambda: upstream.hits["/api/player/r5"] == 1)  # the first holds the key's lease, fetching
    got = await exchange(second.proxy_url, raw_get("/api/player/r5"))  # led by its lane, which waits on the lease
    assert status_of(await leader) == 200
    assert upstream.hits["/api/player/r5"] == 1
    assert body_of(got) == b'{"player": 5}' and header(got, "X-Origin") == "yes"
    assert "collapsed" in (header(got, "Cache-Status") or "")  # the other process's fill, as a follower gets it
