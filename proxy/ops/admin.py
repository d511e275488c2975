"""The admin listener (Envoy-style, never on the proxy port): health, stats, metrics, dashboard, rules, purge, warm."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from importlib import resources
from typing import Final, Literal, Protocol, TypeVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from proxy.cache.events import Selector
from proxy.cache.invalidation import purge_uri
from proxy.cache.tiers import TieredCache
from proxy.config.reload import Reloaded
from proxy.config.rules import RuleSet
from proxy.config.settings import Config, is_loopback
from proxy.config.units import enc_hook
from proxy.errors import ConfigError
from proxy.ops.stats import History, stats_of
from proxy.ops.warm import WarmItem, WarmRequest, WarmResult, items_for, warm
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.snapshots import Snapshot, merge
from proxy.telemetry.workers import TICK, WorkerDir

B = TypeVar("B", bound=msgspec.Struct)


class Sidecar(Protocol):
    """What the admin listener needs of the running proxy (app.Sidecar satisfies it): a view, not an import, so
    the admin code sits below the wiring that builds it."""

    admin_token: str | None
    config: Config
    rules: RuleSet
    tiers: TieredCache
    upstream: UpstreamClient | None
    clock: Callable[[], float]
    started_at: float
    history: History
    workers: WorkerDir | None
    proxy_url: str

    def snapshots(self) -> list[Snapshot]: ...

    def reload(self, trigger: str = ...) -> Reloaded: ...

READY_TIMEOUT: Final = 2.0  # seconds; Kubernetes' default probe timeout is 1 s, ours is set to 3 s
SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar")
DASHBOARD: web.AppKey[bytes] = web.AppKey("dashboard")


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


def build_admin_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(middlewares=[_errors, _host, _auth, _same_origin])
    app[SIDECAR] = sidecar
    app[DASHBOARD] = (resources.files(__package__) / "dashboard.html").read_bytes()
    app.router.add_get("/", _dashboard)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/stats/history", _history)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/rules", _rules)
    app.router.add_post("/rules/reload", _reload)
    app.router.add_post("/purge", _purge)
    app.router.add_post("/warm", _warm)
    return app


def build_metrics_app(sidecar: Sidecar) -> web.Application:
    """The read-only listener (`[server] metrics`): safe to expose to Prometheus and probes, nothing mutates."""
    app = web.Application(middlewares=[_errors])
    app[SIDECAR] = sidecar
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data, enc_hook=enc_hook), status=status,
                        content_type="application/json")


def problem(status: int, error: str, message: str) -> web.Response:
    """Every admin error is JSON with a machine-readable `error` and a message a person can act on."""
    return _json({"error": error, "message": message, "status": status}, status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method, body too large) as JSON, like every other admin error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        hint = {404: f"no admin call at {request.path}; see the README's admin API table",
                405: f"{request.method} is not allowed on {request.path}",
                413: f"the body is larger than {request.client_max_size} bytes"}.get(exc.status, exc.reason)
        return problem(exc.status, exc.reason.lower().replace(" ", "_"), hint)


def host_allowed(host_header: str, own: tuple[str, ...]) -> bool:
    """Whether a `Host` names this listener: a loopback name or address, or one of `own` (the address the
    connection arrived on and `[server] admin_hosts`). A page on another name that resolves here (DNS
    rebinding) is refused, whatever the port, since a port-forward may change the port."""
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower().rstrip(".")
    return bool(host) and (is_loopback(host) or host.endswith(".localhost") or host in own)


@web.middleware
async def _host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin listener answers only for its own names (DNS rebinding would otherwise read /stats)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    own = (*(h.strip("[]").lower() for h in request.app[SIDECAR].config.server.admin_hosts),
           *((str(sockname[0]).lower(),) if sockname else ()))
    if not host_allowed(request.headers.get("Host", ""), own):
        return problem(421, "misdirected_request", f"this admin listener does not answer for Host "
                       f"{request.headers.get('Host', '')!r}; use 127.0.0.1 or localhost, or add the name to "
                       "[server] admin_hosts")
    return await handler(request)


@web.middleware
async def _same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A mutating call must come from a script or a person, not from a web page on another site: a browser
    says where a request comes from (`Origin`, `Sec-Fetch-Site`), and cannot send a body as `Content-Type:
    application/json` across sites without a CORS preflight, which this listener never grants. A call without
    a body (`/rules/reload`) needs no Content-Type."""
    if request.method in ("GET", "HEAD"):
        return await handler(request)
    site = request.headers.get("Sec-Fetch-Site", "")
    origin = request.headers.get("Origin")
    if site in ("cross-site", "same-site") or (origin is not None and URL(origin).raw_authority != request.host):
        return problem(403, "cross_site_request", f"mutating admin calls are refused from web pages on other "
                       f"origins (Origin {origin!r}, Sec-Fetch-Site {site!r}); call it with curl or a script")
    if request.content_type != "application/json" and request.content_length != 0 and request.body_exists:
        return problem(415, "unsupported_media_type", f"send the body as JSON with `Content-Type: "
                       f"application/json`, got {request.headers.get('Content-Type', 'none')!r}")
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutating calls need the bearer token when one is set; compared in constant time."""
    token = request.app[SIDECAR].admin_token
    if token and request.method not in ("GET", "HEAD"):
        given = request.headers.get("Authorization", "")
        # Digests first: compare_digest's time then depends on neither the token's length nor its content.
        expected = hashlib.sha256(f"Bearer {token}".encode()).digest()
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
            return problem(401, "unauthorized", "this call needs `Authorization: Bearer <SIDECACHE_ADMIN_TOKEN>`")
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready when the upstream answers its health path with any status: the proxy can do its job."""
    sidecar = request.app[SIDECAR]
    upstream_client = sidecar.upstream
    assert upstream_client is not None  # set by Sidecar.start before any listener opens

    async def probe() -> int:
        async with upstream_client.open("GET", sidecar.config.upstream.health_path, CIMultiDict()) as resp:
            return resp.status

    try:  # within a probe's usual timeout, whatever the upstream's read timeout
        upstream = {"status": "up", "http_status": await asyncio.wait_for(probe(), READY_TIMEOUT)}
    except Exception as exc:  # any failure means "not ready", with the reason shown
        return _json({"status": "not ready", "upstream": {"status": "down", "error": str(exc)}}, 503)
    return _json({"status": "ready", "upstream": upstream, "redis": sidecar.tiers.redis_status()})  # not required


def view_of(sidecar: Sidecar) -> tuple[Metrics, list[Snapshot]]:
    """Every worker's numbers merged: this one's live, the others' as of their last snapshot (at most 1 s old)."""
    snaps = sidecar.snapshots()
    return merge(snaps), snaps


async def _stats(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    view, snaps = view_of(sidecar)
    return _json(stats_of(view, snaps, rules=sidecar.rules, history=sidecar.history, now=sidecar.clock(),
                          started_at=sidecar.started_at))


async def _history(request: web.Request) -> web.Response:
    """The last 10 minutes of running totals, one sample a second: the dashboard's past when it opens."""
    return _json({"interval_s": TICK, "samples": list(request.app[SIDECAR].history.samples)})


async def _metrics(request: web.Request) -> web.Response:
    view, snaps = view_of(request.app[SIDECAR])
    view.gauges["sidecache_workers"] = lambda: [({}, float(len(snaps)))]
    return web.Response(body=generate_latest(view.registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _dashboard(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DASHBOARD], content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def _body(request: web.Request, type_: type[B], expected: str) -> B | web.Response:
    """The JSON body as a Struct, or the 400 that names the field at fault and the shapes expected."""
    try:
        return msgspec.json.decode(await request.read(), type=type_)
    except msgspec.DecodeError as exc:
        return problem(400, "bad_request", f"{request.path.strip('/')} body: {exc}; expected {expected}")


async def _rules(request: web.Request) -> web.Response:
    rules = request.app[SIDECAR].rules
    return _json({"rules": [{"source": r.source, **msgspec.to_builtins(r.route, enc_hook=enc_hook)}
                            for r in rules.rules]})


def unknown_route(name: str) -> web.Response:
    return problem(404, "unknown_route", f"no rule is named {name!r}; see GET /rules")


async def _purge(request: web.Request) -> web.Response:
    body = await _body(request, PurgeRequest, '{"url": "/path?query"}, {"route": NAME}, {"tag": TAG} or '
                       '{"all": true}')
    if isinstance(body, web.Response):
        return body
    sidecar = request.app[SIDECAR]
    if body.all:
        n = await sidecar.tiers.purge(Selector("all"))
    elif body.route is not None:
        if body.route not in sidecar.rules.by_name:
            return unknown_route(body.route)
        n = await sidecar.tiers.purge(Selector("route", body.route))
    elif body.tag is not None:
        n = await sidecar.tiers.purge(Selector("tag", body.tag))
    else:
        assert body.url is not None
        if not body.url.startswith("/"):
            return problem(400, "bad_request", f"`url` must be a path with its query, like /path?a=1, got {body.url!r}")
        n = await purge_uri(sidecar.tiers, sidecar.rules, URL(body.url))
    return _json({"purged": n})


async def _reload(request: web.Request) -> web.Response:
    """Both files again, all or nothing; the other workers follow within a second."""
    sidecar = request.app[SIDECAR]
    try:
        done = sidecar.reload()
    except ConfigError as exc:
        return _json({"error": "invalid_config", "status": 422, "problems": exc.problems,
                      "message": f"nothing was reloaded; the {len(sidecar.rules.rules)} rules loaded before stay "
                                 "in force"}, 422)
    if sidecar.workers is not None:
        sidecar.workers.announce_reload()
    return _json(done)


async def _warm(request: web.Request) -> web.Response:
    body = await _body(request, WarmRequest, '{"requests": [{"path": ..., "query": ...}]} or '
                       '{"route": NAME, "params": [{...}]}')
    if isinstance(body, web.Response):
        return body
    sidecar = request.app[SIDECAR]
    items: list[WarmItem | WarmResult] = list(body.requests or [])
    if body.route is not None:
        rule = sidecar.rules.by_name.get(body.route)
        if rule is None:
            return unknown_route(body.route)
        items = items_for(rule, body.params or [])
    return _json(await warm(sidecar.proxy_url, sidecar.rules, items, body.concurrency))
