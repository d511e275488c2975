"""The admin listener (Envoy-style, never on the proxy port): health, stats, metrics, rules, purge."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Literal

import msgspec
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from . import __version__
from .keys import cache_key
from .units import enc_hook

if TYPE_CHECKING:
    from .app import Sidecar

SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar")


class PurgeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Exactly one of url, route, tag or all."""

    url: str | None = None
    route: str | None = None
    tag: str | None = None
    all: Literal[True] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("url", "route", "tag", "all") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `url`, `route`, `tag` or `all`")


class RouteStats(msgspec.Struct):
    requests: int
    outcomes: dict[str, int]
    upstream_calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class Stats(msgspec.Struct):
    version: str
    uptime_s: float
    requests: int
    hits: int
    hit_ratio: float
    upstream_calls: int
    upstream_calls_saved: int
    memory: dict[str, int]
    routes: dict[str, RouteStats]


def build_admin_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app[SIDECAR] = sidecar
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/rules", _rules)
    app.router.add_post("/purge", _purge)
    return app


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data, enc_hook=enc_hook), status=status,
                        content_type="application/json")


def problem(status: int, error: str, message: str) -> web.Response:
    """Every admin error is JSON with a machine-readable `error` and a message a person can act on."""
    return _json({"error": error, "message": message, "status": status}, status)


@web.middleware
async def _auth(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Mutating calls need the bearer token when one is set; compared in constant time."""
    token = request.app[SIDECAR].admin_token
    if token and request.method not in ("GET", "HEAD"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return problem(401, "unauthorized", "this call needs `Authorization: Bearer <SIDECACHE_ADMIN_TOKEN>`")
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready when the upstream answers its health path with any status: the proxy can do its job."""
    sidecar = request.app[SIDECAR]
    assert sidecar.upstream is not None
    try:
        async with sidecar.upstream.open("GET", sidecar.config.upstream.health_path, CIMultiDict()) as resp:
            upstream = {"status": "up", "http_status": resp.status}
    except Exception as exc:  # any failure means "not ready", with the reason shown
        return _json({"status": "not ready", "upstream": {"status": "down", "error": str(exc)}}, 503)
    return _json({"status": "ready", "upstream": upstream, "redis": {"status": "not configured"}})


def stats_of(sidecar: Sidecar) -> Stats:
    m = sidecar.metrics
    routes: dict[str, RouteStats] = {}
    for route, h in m.latency.items():
        outcomes = {o: n for (r, o), n in m.requests.items() if r == route}
        calls = sum(n for (r, _), n in m.upstream.items() if r == route)
        routes[route] = RouteStats(
            requests=sum(outcomes.values()), outcomes=outcomes, upstream_calls=calls,
            p50_ms=round(h.quantile(0.5) * 1000, 3), p95_ms=round(h.quantile(0.95) * 1000, 3),
            p99_ms=round(h.quantile(0.99) * 1000, 3),
        )
    total = sum(m.requests.values())
    hits = sum(n for (_, o), n in m.requests.items() if o in ("hit", "stale", "collapsed", "batched"))
    upstream_calls = sum(m.upstream.values())
    cached_routes = sum(r.requests for name, r in routes.items() if name != "-")
    return Stats(
        version=__version__, uptime_s=round(sidecar.clock() - sidecar.started_at, 3), requests=total, hits=hits,
        hit_ratio=round(hits / total, 4) if total else 0.0, upstream_calls=upstream_calls,
        upstream_calls_saved=max(0, cached_routes - sum(n for (r, _), n in m.upstream.items() if r != "-")),
        memory={"entries": len(sidecar.memory), "bytes": sidecar.memory.bytes,
                "max_entries": sidecar.memory.max_entries, "max_bytes": sidecar.memory.max_bytes,
                "evictions": sidecar.memory.evictions},
        routes=routes,
    )


async def _stats(request: web.Request) -> web.Response:
    return _json(stats_of(request.app[SIDECAR]))


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[SIDECAR].metrics.registry()
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _rules(request: web.Request) -> web.Response:
    rules = request.app[SIDECAR].rules
    return _json({"rules": [{"source": r.source, **msgspec.to_builtins(r.route, enc_hook=enc_hook)} for r in rules.rules]})


async def _purge(request: web.Request) -> web.Response:
    try:
        body = msgspec.json.decode(await request.read(), type=PurgeRequest)
    except msgspec.DecodeError as exc:
        return problem(400, "bad_request", f"purge body: {exc}; expected one of {{\"url\": \"/path?query\"}}, "
                       "{\"route\": NAME}, {\"tag\": TAG} or {\"all\": true}")
    sidecar = request.app[SIDECAR]
    if body.all:
        n = await sidecar.tiers.purge(lambda k, e: True)
    elif body.route is not None:
        if body.route not in sidecar.rules.by_name:
            return problem(404, "unknown_route", f"no rule is named {body.route!r}; see GET /rules")
        n = await sidecar.tiers.purge(lambda k, e: e.route == body.route)
    elif body.tag is not None:
        n = await sidecar.tiers.purge(lambda k, e: body.tag in e.tags)
    else:
        assert body.url is not None
        url = URL(body.url)
        matched = sidecar.rules.match("GET", url.path)
        if matched is None:
            return problem(404, "no_rule", f"no rule caches GET {url.path}")
        rule, params = matched
        key = cache_key(rule, params, url.query, {})
        n = await sidecar.tiers.purge(lambda k, e: k == key)
    return _json({"purged": n})
