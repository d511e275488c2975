"""An A1Betting-shaped upstream with the real routes, shapes and quirks, for the demo, the bench and the tests:
its routes, its state (the players it has cached, the calls it received) and its fault knobs. What it accepts
and how it rejects the rest is devtools/sample_requests.py; its players and their numbers, sample_data.py."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.devtools.sample_data import (
    BENCHMARK_PLAYERS,
    DEFAULT_STAT_TYPES,
    EnrichedProp,
    analyse_prop,
    hitting_stats,
    player_id,
    player_name,
    stat_data,
)
from proxy.devtools.sample_requests import (
    Failed,
    Item,
    Rejected,
    batch_items,
    decode_body,
    group_by_player,
    problem,
    prop_query,
    query_bool,
    query_int,
)

MAX_BATCH: Final = 50  # batch_prop_analysis_service.py:101 drops the rest silently
_CACHE_SIZE: Final = 500
GZIP_MIN_SIZE: Final = 1000  # the enhanced app's GZipMiddleware(minimum_size=1000) (a1betting-api.md 6)
_HEADERS: Final = {  # SecurityMiddleware's; upstream sends no Cache-Control, ETag or Last-Modified
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Server": "A1Betting/2.0",
}
def _gzipped(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The enhanced app's GZipMiddleware (Starlette's, `minimum_size=1000`, level 9): a large body is sent gzipped
    to a client whose Accept-Encoding names gzip, with `Vary: Accept-Encoding`."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes) or len(body) < GZIP_MIN_SIZE or "Content-Encoding" in response.headers \
            or "gzip" not in request.headers.get("Accept-Encoding", ""):
        return response
    assert isinstance(response, web.Response)
    response.body = gzip.compress(body, compresslevel=9, mtime=0)
    response.headers["Content-Encoding"] = "gzip"
    response.headers.add("Vary", "Accept-Encoding")
    return response


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


class _Knobs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    batch_latency: float | None = None
    batch_fails_all: bool | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the backend saw it, so tests can check what the proxy forwarded."""

    route: str
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes


class SampleBackend:
    """A deterministic stand-in for the A1Betting backend that counts calls and fails on demand."""

    def __init__(self, latency: float = 0.0, batch_latency: float | None = None) -> None:
        self.latency = latency
        self.batch_latency = latency if batch_latency is None else batch_latency
        self.reset()

    def reset(self) -> None:
        """Forget every call, counter and cached player, and clear the fault knobs."""
        self.calls: Counter[str] = Counter()
        self.received: list[ReceivedRequest] = []
        self.fail_batch_status: int | None = None
        self.batch_garbage = False
        self.batch_fails_all = False  # every batch item fails as player_not_found, as upstream's does without its cache
        self.failing_players: set[str] = set()
        self.group_error_players: set[str] = set()
        self._cache: dict[str, float] = {}  # upstream's player cache key -> cached_at
        self._stats: Counter[str] = Counter()  # hits, misses, evictions, batches, props, failed_props
        self._batch_seconds = 0.0

    def app(self) -> web.Application:
        """A fresh application with every route, sharing this backend's counters and knobs."""
        app = web.Application(middlewares=[self._middleware()])
        api = "/api/v1/optimized"
        for method, path, handler, name in (
            ("GET", "/health", self._health, "health"),
            ("GET", "/mlb/enhanced-prop-analysis/{prop_id}", self._prop_analysis, "prop-analysis"),
            ("POST", f"{api}/batch-prop-analysis", self._batch, "batch-prop-analysis"),
            ("POST", f"{api}/enhanced-prop-analysis", self._enhanced, "enhanced-prop-analysis"),
            ("GET", f"{api}/player-data/{{player_name}}", self._player_data, "player-data"),
            ("POST", f"{api}/warm-cache", self._warm_cache, "warm-cache"),
            ("GET", f"{api}/performance-metrics", self._performance_metrics, "performance-metrics"),
            ("GET", f"{api}/cache-stats", self._cache_stats, "cache-stats"),
            ("POST", f"{api}/benchmark-performance", self._benchmark, "benchmark-performance"),
            ("GET", "/api/v1/players/{name}/id", self._player_id, "player-id"),
            ("GET", "/api/v1/players/{player_id}/game-logs", self._game_logs, "game-logs"),
            ("GET", "/api/v1/players/{player_id}/season-stats", self._season_stats, "season-stats"),
        ):
            app.router.add_route(method, path, handler, name=name)
        return app

    def _middleware(self) -> Middleware:
        """Record, then delay, then map errors to upstream's bodies and add upstream's headers."""

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == "/_sample/calls":  # for a backend in another process (bench); not recorded
                return _json(dict(self.calls))
            if request.path == "/_sample/knobs":  # the bench turns faults on and off in another process
                return await self._knobs(request)
            started, route = time.perf_counter(), request.match_info.route.name or "unmatched"
            await self._record(route, request)
            delay = self.batch_latency if route == "batch-prop-analysis" else self.latency
            try:
                if delay > 0 and route != "unmatched":
                    await asyncio.sleep(delay)
                response = await handler(request)
            except Rejected as exc:
                response = _json({"detail": exc.problems}, 422)
            except Failed as exc:
                response = _json({"error": exc.message, "status_code": exc.status}, exc.status)
            except web.HTTPException as exc:  # the router's 404 and 405, in FastAPI's default form
                response = _json({"detail": exc.reason}, exc.status)
                response.headers.update({key: value for key, value in exc.headers.items() if key == "Allow"})
            response.headers.update(_HEADERS)
            response.headers["X-Process-Time"] = f"{time.perf_counter() - started:.6f}"
            return _gzipped(request, response)

        return middleware

    async def _knobs(self, request: web.Request) -> web.Response:
        """POST {"batch_latency": seconds, "batch_fails_all": bool}: set either; answers the knobs as they are."""
        if request.method == "POST":
            knobs = msgspec.json.decode(await request.read(), type=_Knobs)
            if knobs.batch_latency is not None:
                self.batch_latency = knobs.batch_latency
            if knobs.batch_fails_all is not None:
                self.batch_fails_all = knobs.batch_fails_all
        return _json({"batch_latency": self.batch_latency, "batch_fails_all": self.batch_fails_all})

    async def _record(self, route: str, request: web.Request) -> None:
        body = await request.read() if request.body_exists else b""
        self.calls[route] += 1
        headers = dict(request.headers)
        self.received.append(
            ReceivedRequest(route, request.method, request.path, request.rel_url.raw_query_string, headers, body)
        )

    def _fails(self, name: str) -> bool:
        """Unknown players fail like upstream's failed MLB lookups; `failing_players` adds known ones."""
        return player_id(name) is None or name.lower().strip() in {p.lower().strip() for p in self.failing_players}

    def _lookup(self, name: str, stat_types: list[str], refresh: bool = False) -> tuple[bool, float]:
        """Play upstream's 500-entry player cache (minus expiry): whether it hit, and when the entry was cached."""
        key = ":".join([name, *sorted(stat_types)])  # case-sensitive name, as upstream's md5 key
        if not refresh and key in self._cache:
            self._stats["hits"] += 1
            return True, self._cache[key]
        self._stats["misses"] += 1
        self._cache[key] = now = time.time()
        if len(self._cache) > _CACHE_SIZE:  # upstream evicts the oldest `cached_at`: FIFO, not LRU
            del self._cache[min(self._cache, key=self._cache.__getitem__)]
            self._stats["evictions"] += 1
        return False, now

    def _hit_rate(self) -> float:
        lookups = self._stats["hits"] + self._stats["misses"]
        return self._stats["hits"] / lookups if lookups else 0.0

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _prop_analysis(self, request: web.Request) -> web.Response:
        fields = prop_query(request.query)
        failed = self._fails(fields.player_name)  # mlb_extras.py:243,247 answer `null` with 200 on any failure
        return _json(None if failed else analyse_prop(request.match_info["prop_id"], fields))

    async def _enhanced(self, request: web.Request) -> web.Response:
        started, fields = time.perf_counter(), prop_query(request.query, ("prop_id",))
        if self._fails(fields.player_name):
            raise Failed(404, "Enhanced analysis could not be generated")
        self._lookup(fields.player_name, [fields.stat_type])
        performance = dict(processing_time=time.perf_counter() - started, optimization_used=True)
        return _json({"analysis": analyse_prop(request.query["prop_id"], fields), "performance": performance})

    async def _batch(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if self.fail_batch_status is not None:
            raise Failed(self.fail_batch_status, f"Batch processing failed: injected {self.fail_batch_status}")
        if self.batch_garbage:
            return web.Response(body=b'{"successful": [{"player_info": <html>502', content_type="application/json")
        body = decode_body(await request.read())
        items = batch_items(body)
        processed = items[:MAX_BATCH]
        try:
            groups, crash = group_by_player(processed), []
        except TypeError as exc:  # e.g. priorities 1 and "high" for one player: still a 200
            groups, processed = {}, []
            crash = [{"error": f"Batch processing error: {exc}", "type": "batch_processing_error"}]
        successful, failed = self._analyse_groups(groups)
        failed += crash
        elapsed = time.perf_counter() - started
        self._batch_seconds += elapsed
        self._stats.update({"batches": 1, "props": len(processed), "failed_props": len(failed)})
        performance = {
            "total_processed": len(processed),
            "processing_time": elapsed,
            "cache_hit_rate": self._hit_rate() if processed else 0.0,  # global and cumulative, not this batch's
            "successful_count": len(successful),
            "failed_count": len(failed),
        }
        optimization = {
            "batch_size": len(items),  # before truncation
            "cache_enabled": body.get("use_cache", True),  # echoed, never read
            "cache_warming": body.get("warm_cache", True),
        }
        return _json(
            {"successful": successful, "failed": failed, "performance": performance, "optimization": optimization}
        )

    def _analyse_groups(self, groups: dict[str, list[Item]]) -> tuple[list[EnrichedProp], list[dict[str, Any]]]:
        successful: list[EnrichedProp] = []
        failed: list[dict[str, Any]] = []
        broken = {name.lower().strip() for name in self.group_error_players}
        for key, group in groups.items():
            if key in broken:  # one entry for the whole group, without a prop_id
                failed.append({"error": f"Player group processing failed for {key}", "type": "player_group_error"})
                continue
            for item in group:
                name = item.fields.player_name
                if self._fails(name) or self.batch_fails_all:
                    error = f"Player data not found for {name}"
                    failed.append({"prop_id": item.prop_id, "error": error, "type": "player_not_found"})
                    continue
                self._lookup(name, [item.fields.stat_type])
                successful.append(analyse_prop(item.prop_id, item.fields))
        return successful, failed

    async def _player_data(self, request: web.Request) -> web.Response:
        name = request.match_info["player_name"]
        pid = player_id(name)
        stat_types = request.query.getall("stat_types", None) or list(DEFAULT_STAT_TYPES)
        refresh = query_bool(request.query, "force_refresh", False)
        if pid is None or self._fails(name):
            raise Failed(404, f"Player data not found for {name}")
        hit, fetched_at = self._lookup(name, stat_types, refresh)  # a hit reports when it was cached
        season = {stat: stat_data(pid, "season") for stat in stat_types}  # stat_type never reaches the MLB call
        data = dict(player_id=pid, player_info={}, game_logs=stat_data(pid, "gameLog"), season_stats=season)
        if not hit:  # a memory-cache hit rebuilds the dict without `stat_types`
            data["stat_types"] = stat_types
        data["fetched_at"] = fetched_at
        optimization = dict(cache_used=not refresh, stat_types_requested=stat_types, fetched_at=fetched_at)
        return _json({"player_data": data, "optimization": optimization})

    async def _warm_cache(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        stat_types = request.query.getall("stat_types", None) or list(DEFAULT_STAT_TYPES)
        names = decode_body(await request.read())
        if not isinstance(names, list):  # the frontend's `{player_names, stat_types}` object lands here
            raise Rejected(problem("list_type", ["body"], names))
        if problems := [problem("string_type", ["body", i], n) for i, n in enumerate(names) if type(n) is not str]:
            raise Rejected(*problems)
        for name in names:
            if not self._fails(name):
                self._lookup(name, stat_types)
        elapsed = time.perf_counter() - started
        warming = dict(players_warmed=len(names), stat_types=stat_types, processing_time=elapsed, status="completed")
        return _json({"cache_warming": warming})

    def _cache_metrics(self) -> dict[str, Any]:
        return {
            "hits": self._stats["hits"],
            "misses": self._stats["misses"],
            "hit_rate": self._hit_rate(),
            "evictions": self._stats["evictions"],
            "memory_cache_size": len(self._cache),
            "max_memory_cache_size": _CACHE_SIZE,
        }

    async def _performance_metrics(self, request: web.Request) -> web.Response:
        batches, props = self._stats["batches"], self._stats["props"]
        processing = {
            "total_batches": batches,
            "total_requests": sum(self.calls.values()),  # every request so far, so no two answers are alike
            "avg_processing_time": self._batch_seconds / batches if batches else 0.0,
            "avg_cache_hit_rate": self._hit_rate(),
            "error_rate": self._stats["failed_props"] / props if props else 0.0,
        }
        service = {"service_initialized": True, "optimized_service_available": True}
        return _json(
            {
                "cache_metrics": self._cache_metrics(),
                "processing_metrics": processing,
                "optimization_stats": service,
                "timestamp": datetime.now().isoformat(),
            }
        )

    async def _cache_stats(self, request: web.Request) -> web.Response:
        rate, size = self._hit_rate(), len(self._cache)
        advice = ["Consider increasing cache TTL for stable data"] if rate < 0.6 else []
        advice += ["Consider increasing memory cache size"] if self._stats["evictions"] > 100 else []
        advice += ["Cache performance is excellent"] if rate > 0.9 else []
        performance = {
            "hit_rate": rate,
            "total_hits": self._stats["hits"],
            "total_misses": self._stats["misses"],
            "evictions": self._stats["evictions"],
            "memory_usage": {"current_size": size, "max_size": _CACHE_SIZE, "utilization": size / _CACHE_SIZE},
        }
        efficiency = "excellent" if rate > 0.8 else "good" if rate > 0.6 else "needs_improvement"
        insights = {"cache_efficiency": efficiency, "recommendations": advice}
        return _json({"cache_performance": performance, "optimization_insights": insights})

    async def _benchmark(self, request: web.Request) -> web.Response:
        players = request.query.getall("player_names", None) or list(BENCHMARK_PLAYERS)
        stat_types = request.query.getall("stat_types", None) or list(DEFAULT_STAT_TYPES)
        iterations = query_int(request.query, "iterations", 3)
        if iterations <= 0:  # upstream divides by len(times)
            raise Failed(500, "Benchmark failed: division by zero")
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            for name in players:
                if not self._fails(name):
                    self._lookup(name, stat_types)
            times.append(time.perf_counter() - started)
        average = sum(times) / len(times)
        config = {"players": players, "stat_types": stat_types, "iterations": iterations}
        results = {"optimized_times": times, "standard_times": [], "cache_performance": self._cache_metrics()}
        grade = "excellent" if average < 0.5 else "good" if average < 1.0 else "needs_improvement"
        summary = {"average_optimized_time": average, "cache_hit_rate": self._hit_rate(), "performance_grade": grade}
        return _json({"benchmark_config": config, "results": results, "summary": summary})

    async def _player_id(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pid = player_id(name)
        if pid is None or self._fails(name):
            raise Failed(404, f"Player not found: {name}")
        return _json({"player_name": player_name(pid), "player_id": pid})

    def _known_id(self, request: web.Request) -> int:
        raw = request.match_info["player_id"]
        name = player_name(int(raw)) if raw.isdigit() else None
        if name is None or self._fails(name):
            raise Failed(404, f"Player data not found for {raw}")
        return int(raw)

    async def _game_logs(self, request: web.Request) -> web.Response:
        pid = self._known_id(request)
        return _json({"player_id": pid, "stats": stat_data(pid, "gameLog")["stats"]})

    async def _season_stats(self, request: web.Request) -> web.Response:
        pid = self._known_id(request)
        if "stat_type" not in request.query:
            raise Rejected(problem("missing", ["query", "stat_type"], None))
        return _json({"player_id": pid, "stat_type": request.query["stat_type"], "stats": hitting_stats(pid, 120)})


def main(argv: list[str] | None = None) -> None:
    """Serve on loopback by hand: `python -m proxy.devtools.sample_backend --port 8000 --latency 0.05`."""
    parser = argparse.ArgumentParser(prog="python -m proxy.devtools.sample_backend", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every request waits (default 0)")
    parser.add_argument("--batch-latency", type=float, help="seconds the batch route waits (default: --latency)")
    parser.add_argument("--batch-fails", action="store_true",
                        help="the batch route fails every prop, as upstream's does without its own cache")
    args = parser.parse_args(argv)
    backend = SampleBackend(args.latency, args.batch_latency)
    backend.batch_fails_all = args.batch_fails
    web.run_app(backend.app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
