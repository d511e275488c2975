"""sidecache on a real Redis Cluster (3 primaries, a replica each, started once for this module): no command
crosses slots, a purge reaches every shard, events reach every process, and a failover fails no request."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster

from proxy.cache.events import Filled, Selector, encode_event
from proxy.cache.redis.keyspace import entry_hash
from proxy.cache.redis.tier import RedisTier
from proxy.config.settings import Config, RedisConfig
from proxy.config.units import Duration
from proxy.devtools.workloads import zipf_trace
from proxy.errors import ConfigError
from proxy.policy.entry import CachedResponse
from tests.support.client import Answer, get, load
from tests.support.factories import ProxyFactory
from tests.support.lanes import fast_lane_only  # noqa: F401 - failovers are slow: one lane here
from tests.support.processes import ROOT, RedisClusterServers, RedisServer, ServeProcess, serve
from tests.support.redis_tier import RULES, cache_key_of, subscribed
from tests.support.upstream import Upstream
from tests.support.waiting import until

SHIPPED_RULES = ROOT / "rules" / "a1betting.toml"


def cluster_config(cluster: RedisClusterServers, **fields: object) -> RedisConfig:
    probes: dict[str, object] = {"probe_min": Duration.of("50ms"), "probe_max": Duration.of("500ms"),
                                 "timeout": Duration.of("250ms")}
    return RedisConfig(mode="cluster", url=cluster.url(), **{**probes, **fields})  # type: ignore[arg-type]


@pytest.fixture
async def client(redis_cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    """Our own cluster client, to see what the cluster holds; sidecache's keys are removed before each test."""
    c = RedisCluster.from_url(redis_cluster.url())
    await c.initialize()
    doomed = [k async for k in c.scan_iter(match="sidecache:*", count=1000)]
    if doomed:
        await c.unlink(*doomed)
    yield c
    await c.aclose()


async def keys_per_node(redis_cluster: RedisClusterServers, pattern: str) -> dict[int, int]:
    """How many of our keys each primary holds."""
    out: dict[int, int] = {}
    for p in redis_cluster.primaries():
        c = RedisCluster.from_url(redis_cluster.url())
        await c.initialize()
        node = c.get_node(host="127.0.0.1", port=p.port)
        out[p.port] = len([k async for k in c.scan_iter(match=pattern, count=1000, target_nodes=node)])
        await c.aclose()
    return out


def entry(now: float, *, tags: list[str], route: str = "player") -> CachedResponse:
    return CachedResponse(status=200, headers=[("Content-Type", "application/json")], body=b"{}", stored_at=now,
                          ttl=60.0, tags=tags, route=route)


async def test_every_redis_operation_runs_on_the_cluster_without_crossing_slots(
    redis_cluster: RedisClusterServers, client: RedisCluster,
) -> None:
    tier = RedisTier(cluster_config(redis_cluster))
    await tier.start()
    heard: list[bytes] = []
    listening = asyncio.ensure_future(tier.listen(heard.append))
    try:
        await until(lambda: tier.subscribed)
        assert tier.breaker.closed
        now = time.time()
        keys = [f"GET /players/p{i}" for i in range(40)]  # hashes in many buckets, so on every shard
        for k in keys:
            assert await tier.set(k, entry(now, tags=["team:nyy", f"player:{k}"]), now=now,
                                  event=encode_event(Filled("me", k)))
        assert len(await tier.get_many(keys)) == 40 and None not in await tier.get_many(keys)
        assert (await tier.get(keys[0])) == entry(now, tags=["team:nyy", f"player:{keys[0]}"])
        per_node = await keys_per_node(redis_cluster, "sidecache:v1:entry:*")
        assert len(per_node) == 3 and min(per_node.values()) > 0, per_node  # every shard holds some
        claim = await tier.acquire("GET /cold", "tok", 5000)
        assert claim.acquired and claim.entry is None
        assert 0 < await tier.lease_left("GET /cold") <= 5
        other = await tier.acquire("GET /cold", "other", 5000)
        assert not other.acquired and other.lease_left > 0
        await tier.set("GET /cold", entry(now, tags=["team:nyy"]), now=now, event=b"x", token="tok")
        assert await tier.lease_left("GET /cold") == 0  # the write script released the lease beside its entry
        await tier.release("GET /players/p1", "nobody's", b"")
        await tier.publish(encode_event(Filled("me", "k")))
        await until(lambda: len(heard) >= 42)  # 41 writes and 1 publish, each heard once
        assert await tier.purge(Selector("key", keys[0])) == {entry_hash(keys[0])}
        assert await tier.purge(Selector("tag", f"player:{keys[1]}")) == {entry_hash(keys[1])}
        gone = await tier.purge(Selector("tag", "team:nyy"))  # 38 entries left, on every shard
        assert gone == {entry_hash(k) for k in [*keys[2:], "GET /cold"]}
        assert sum((await keys_per_node(redis_cluster, "sidecache:v1:entry:*")).values()) == 0
        assert [k async for k in client.scan_iter(match="sidecache:v1:tag:*team:nyy")] == []  # every bucket's index
        for k in keys[:3]:
            await tier.set(k, entry(now, tags=[]), now=now, event=b"x")
        assert await tier.purge(Selector("route", "player")) == {entry_hash(k) for k in keys[:3]}
        for k in keys[:3]:
            await tier.set(k, entry(now, tags=["t"]), now=now, event=b"x")
        assert await tier.purge(Selector("all")) == {entry_hash(k) for k in keys[:3]}
        assert [k async for k in client.scan_iter(match="sidecache:*")] == []
        assert tier.errors == {} and tier.breaker.closed  # no CROSSSLOT, no error of any kind
    finally:
        listening.cancel()
        await asyncio.wait([listening])
        await tier.close()


async def test_a_seed_that_is_no_cluster_node_is_a_start_up_error(
    make_proxy: ProxyFactory, redis_server: RedisServer,
) -> None:
    config = Config(redis=RedisConfig(mode="cluster", url=redis_server.url(db=0)))
    with pytest.raises(ConfigError) as err:
        await make_proxy(RULES, config=config)
    assert err.value.problems == [
        f'redis: mode = "cluster", but the seed node (redis://127.0.0.1:{redis_server.port}/0) is not a Redis '
        'Cluster node (cluster mode is not enabled on it): name a node of the cluster, or set mode = "single"']


async def test_events_from_every_shard_reach_every_process(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_cluster: RedisClusterServers,
    client: RedisCluster,
) -> None:
    config = Config(redis=cluster_config(redis_cluster))
    a, b = await make_proxy(RULES, config=config), await make_proxy(RULES, config=config)
    await until(lambda: all(p.tiers.redis is not None and p.tiers.redis.subscribed for p in (a, b)))
    paths = [f"/players/p{i}" for i in range(24)]
    for p in paths:
        assert (await get(http, a.proxy_url + p)).cache_status.endswith("stored")
    await until(lambda: _count(client, 24))
    for p in paths:
        assert (await get(http, b.proxy_url + p)).cache_status.startswith("sidecache; hit")  # promoted into b's memory
    p3 = cache_key_of(b, "/players/p3")
    assert b.memory.get(p3) is not None
    async with http.post(a.admin_url + "/purge", json={"tag": "player:p3"}) as r:
        assert await r.json() == {"purged": 1}
    await until(lambda: b.memory.get(p3) is None, timeout=0.5)
    async with http.post(a.admin_url + "/purge", json={"route": "player"}) as r:
        assert await r.json() == {"purged": 24 - 1}
    await until(lambda: len(b.memory) == 0, timeout=0.5)  # the entries sat on all three shards
    for p in paths:
        assert (await get(http, a.proxy_url + p)).cache_status.endswith("stored")
    await until(lambda: _count(client, 24))
    await client.unlink(*[k async for k in client.scan_iter(match="sidecache:v1:entry:*")])  # no event: silent
    for p in paths:
        assert (await get(http, b.proxy_url + p)).cache_status.endswith("stored")  # b fills again: a's copies must go
    await until(lambda: len(a.memory) == 0, timeout=0.5)  # b's Filled events, published on every shard
    assert upstream.hits.total() == 24 * 3


async def _count(client: RedisCluster, n: int) -> bool:
    return len([k async for k in client.scan_iter(match="sidecache:v1:entry:*")]) == n


@contextlib.contextmanager
def replicas(n: int, tmp_path: Path, upstream: Upstream, cluster: RedisClusterServers,
             rules_text: str = RULES) -> Iterator[list[ServeProcess]]:
    """n `sidecache serve` processes sharing the cluster, as a deployment runs replicas."""
    rules, config = tmp_path / "rules.toml", tmp_path / "sidecache.toml"
    rules.write_text(rules_text)
    config.write_text(f'[redis]\nmode = "cluster"\nurl = "{cluster.url()}"\ntimeout = "250ms"\n')
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve("--config", str(config), "--rules", str(rules), "--upstream", upstream.url))
               for _ in range(n)]


async def test_three_replicas_on_the_cluster_fill_once_and_purge_everywhere(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, redis_cluster: RedisClusterServers,
    client: RedisCluster,
) -> None:
    upstream.reply("/players/ohtani", body=b'{"name": "ohtani"}', delay=0.3)
    with replicas(3, tmp_path, upstream, redis_cluster) as procs:
        await subscribed(http, *procs, timeout=10.0)
        results = await asyncio.gather(*(get(http, p.proxy_url + "/players/ohtani") for p in procs * 100))
        assert upstream.hits["/players/ohtani"] == 1  # 300 requests over 3 processes, one upstream call
        assert {(s, body) for s, _, body in results} == {(200, b'{"name": "ohtani"}')}
        tagged = [f"/players/p{i}" for i in range(30)]
        for i, path in enumerate(tagged):
            assert (await get(http, procs[i % 3].proxy_url + path)).status == 200
        await until(lambda: _count(client, 31))
        for p in procs:
            for path in tagged:  # in every memory
                assert (await get(http, p.proxy_url + path)).cache_status.startswith("sidecache; hit")
        async with http.get(procs[1].admin_url + "/readyz") as r:
            ready = (await r.json())["redis"]
        assert ready["mode"] == "cluster" and ready["status"] == "up"
        roles = sorted((n["role"], n["up"]) for n in ready["nodes"])
        assert roles == [("primary", True)] * 3 + [("replica", True)] * 3
        async with http.get(procs[2].admin_url + "/stats") as r:
            stats = (await r.json())["redis"]
        assert (stats["status"], stats["mode"]) == ("up", "cluster")
        assert sorted(n["address"] for n in stats["nodes"]) == sorted(f"127.0.0.1:{p}" for p in redis_cluster.ports)
        assert all(n["up"] for n in stats["nodes"])
        async with http.get(procs[2].admin_url + "/metrics") as r:
            text = await r.text()
        assert text.count('sidecache_redis_node_up{mode="cluster",node="127.0.0.1:') == 6
        assert "sidecache_redis_up 1.0" in text
        async with http.post(procs[0].admin_url + "/purge", json={"route": "player"}) as r:
            assert await r.json() == {"purged": 31}
        assert await _count(client, 0)  # every shard's entries
        await asyncio.sleep(0.1)
        for i, p in enumerate(procs):  # each had every entry in memory: the purge's event dropped them there too
            assert (await get(http, p.proxy_url + f"/players/p{i}")).cache_status.startswith("sidecache; fwd=miss")
    assert sum(n for path, n in upstream.hits.items() if path.startswith("/players/")) == 1 + 30 + 3


async def test_the_reference_trace_round_robin_over_three_replicas_fetches_each_distinct_key_once(
    tmp_path: Path, upstream: Upstream, http: aiohttp.ClientSession, redis_cluster: RedisClusterServers,
    client: RedisCluster,
) -> None:
    """The bench's Zipf trace over the four per-player routes (shipped rules), request i to replica i % 3, 50 in
    flight: a key fetched by one replica is a hit on the other two, so the origin sees each distinct key once."""
    trace = zipf_trace(n=1000)
    for path in {urlsplit(t).path for t in trace}:
        upstream.reply(unquote(path), delay=0.02)  # the origin's JSON echo of the request, a little slow
    with replicas(3, tmp_path, upstream, redis_cluster, SHIPPED_RULES.read_text()) as procs:
        await subscribed(http, *procs, timeout=10.0)
        answers: list[tuple[str, Answer]] = []
        queue = iter(enumerate(trace))

        async def worker() -> None:
            for i, target in queue:
                answers.append((target, await get(http, procs[i % 3].proxy_url + target)))

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(50))), 60)
    assert len(answers) == len(trace)
    wrong = [(t, a.status, a.body[:80]) for t, a in answers
             if a.status != 200 or msgspec.json.decode(a.body)["raw_path"] != t]
    assert wrong == []
    calls = collections.Counter(s.raw_path for s in upstream.seen if s.path != "/health")  # readiness probes
    assert set(calls) == set(trace)
    assert {t: n for t, n in calls.items() if n > 1} == {}  # each distinct key fetched once, by one replica
    assert sum(calls.values()) == len(set(trace))



@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "SIGKILL"])
async def test_a_primary_failing_over_mid_load_fails_no_request_and_both_tiers_come_back(
    make_proxy: ProxyFactory, upstream: Upstream, http: aiohttp.ClientSession, redis_cluster: RedisClusterServers,
    client: RedisCluster, how: str,
) -> None:
    upstream.reply("/players/slow", delay=0.01)
    proxy = await make_proxy(RULES, config=Config(redis=cluster_config(redis_cluster)))
    tier = proxy.tiers.redis
    assert tier is not None
    victim = redis_cluster.primaries()[0]
    replica = redis_cluster.replica_of(victim)
    paths = [f"/players/p{i % 150}?n={i // 150}" for i in range(600)]  # misses throughout: each asks Redis
    running = asyncio.ensure_future(load(http, proxy.proxy_url, paths))
    await asyncio.sleep(0.3)
    if how == "SIGKILL":
        assert victim.proc is not None
        victim.kill()
    else:
        await asyncio.to_thread(_command, replica, "CLUSTER", "FAILOVER")
    statuses = await asyncio.wait_for(running, 60)
    assert statuses == [200] * 600  # not one failed request, whatever the Cache-Status said meanwhile

    async def back_on_two_tiers() -> bool:
        """The breaker closed, and a new answer lands in the cluster (in the failed-over shard or another)."""
        if not tier.breaker.closed:
            return False
        path = f"/teams/t{time.monotonic_ns()}"
        await get(http, proxy.proxy_url + path)
        name = tier.keys.entry(entry_hash(cache_key_of(proxy, path)))
        for _ in range(25):
            with contextlib.suppress(Exception):  # our own client finds the new primary by itself too
                if await client.exists(name):
                    return True
            await asyncio.sleep(0.02)
        return False

    await until(back_on_two_tiers, timeout=20.0)
    assert redis_cluster.role(replica) == "master"
    if how == "CLUSTER FAILOVER":
        await asyncio.to_thread(_wait_healthy, redis_cluster)
    # (SIGKILL runs last in this module: the killed node stays down, and the teardown skips it)


def _command(server: RedisServer, *args: str) -> str:
    from tests.support.processes import redis_command

    return redis_command(server.port, *args)


def _wait_healthy(cluster: RedisClusterServers) -> None:
    from tests.support.waiting import wait_for

    wait_for(cluster.healthy, "the cluster to settle after the failover")
