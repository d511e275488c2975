"""Wiring: one Sidecar owns the clients, tiers and both listeners for the life of the process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.cache.memory import MemoryTier
from proxy.cache.redis.tier import open_redis
from proxy.cache.tiers import TieredCache
from proxy.config.reload import Reloaded, Sources, live_config, load_sources
from proxy.config.rules import RuleSet
from proxy.config.settings import Config, check_admin_exposure, parse_hostport
from proxy.errors import ConfigError, ListenerError
from proxy.ops import admin
from proxy.ops.stats import History, sample_of
from proxy.serving.fast_lane import FastLane
from proxy.serving.handler import ProxyHandler
from proxy.serving.headers import Forwarding
from proxy.serving.listener import ProxyServer, connection_bound
from proxy.serving.upstream import UpstreamClient
from proxy.telemetry.access_log import AccessLog
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.snapshots import Snapshot, merge, snapshot_of
from proxy.telemetry.workers import TICK, WorkerDir

log = logging.getLogger("sidecache")


class Sidecar:
    """The proxy listener runs on aiohttp's low-level web.Server (one handler, no router or middleware, the
    faster hit path); the admin listener is an ordinary web.Application. Both share this object's state."""

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        *,
        admin_token: str | None = None,
        clock: Callable[[], float] = time.time,
        reuse_port: bool = False,
        serve_admin: bool = True,
        sources: Sources | None = None,
        worker_index: int = 0,
        state_dir: Path | None = None,
    ) -> None:
        if problems := check_admin_exposure(config, admin_token if serve_admin else "n/a"):
            raise ConfigError(problems)
        self.config = config
        self.rules = rules
        self.admin_token = admin_token or None
        self.clock = clock
        self.reuse_port = reuse_port
        self.serve_admin = serve_admin
        self.metrics = Metrics()
        self.memory = MemoryTier(
            max_entries=config.memory.max_entries,
            max_bytes=config.memory.max_bytes,
            max_entry_bytes=config.memory.max_entry_bytes,
            clock=clock,
        )
        self.tiers = TieredCache(self.memory, clock, open_redis(config.redis), lease=config.redis.lease,
                                 max_wait=config.upstream.read_timeout)
        self.started_at = clock()
        self.memory.on_expired = lambda e, now: self.metrics.expired_miss(e.route, now - e.expires_at)
        self.sources = sources  # the files to reload on POST /rules/reload and SIGHUP
        self.worker_index = worker_index
        self.workers = WorkerDir(state_dir, worker_index) if state_dir is not None else None
        self.history = History(self.started_at)
        self._ticker: asyncio.Task[None] | None = None
        self.metrics_url = ""
        self._runners: list[web.BaseRunner] = []
        self.upstream: UpstreamClient | None = None
        self.handler: ProxyHandler | None = None
        self.server: ProxyServer | None = None
        self.proxy_url = ""
        self.admin_url = ""

    async def start(self) -> None:
        """Create the pooled clients, then bind both listeners (port 0 picks a free one)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self.tiers.start()  # a Redis that does not answer degrades the cache, never stops the start
        self.upstream = UpstreamClient(self.config.upstream, self.metrics)
        self.handler = ProxyHandler(self.rules, self.tiers, self.upstream, self.metrics, clock=self.clock,
                                    unruled=self.config.defaults.unruled,
                                    max_entry_bytes=self.config.memory.max_entry_bytes,
                                    trust=Forwarding(self.config.server.trusted_proxies),
                                    targets=self.config.defaults.targeted_cache_control)
        self._register_gauges()
        self.handler.access_log = self._access_log()
        srv = self.config.server
        self.server = ProxyServer(self.handler, access_log=None, handler_cancellation=True,
                                  keepalive_timeout=srv.keepalive_timeout, header_timeout=srv.header_timeout,
                                  max_connections=connection_bound(self.config),
                                  fast_lane=FastLane(self.handler) if srv.fast_lane else None)
        self.handler.arriving = self.server.arriving  # connections that sent nothing yet: batches linger for them
        self._register_listener_gauges(self.server)
        log.info("worker %d: at most %d client connections; header timeout %s, idle timeout %s", self.worker_index,
                 self.server.max_connections, srv.header_timeout.text, srv.keepalive_timeout.text)
        runner = web.ServerRunner(self.server, handle_signals=False, access_log=None, shutdown_timeout=5)
        self.proxy_url = await self._bind(runner, "listen", reuse_port=self.reuse_port or None, backlog=1024)
        if self.serve_admin:
            admin_runner = web.AppRunner(admin.build_admin_app(self), handle_signals=False, access_log=None)
            self.admin_url = await self._bind(admin_runner, "admin")
            if self.config.server.metrics:
                metrics_runner = web.AppRunner(admin.build_metrics_app(self), handle_signals=False, access_log=None)
                self.metrics_url = await self._bind(metrics_runner, "metrics")
        self._ticker = asyncio.ensure_future(self._tick())

    async def _bind(self, runner: web.BaseRunner, name: str, **site: object) -> str:
        """Start a listener on `[server] <name>`; a bind that fails is one line naming the address, not a traceback."""
        await runner.setup()
        self._runners.append(runner)
        address = getattr(self.config.server, name)
        host, port = parse_hostport(address)
        try:
            await web.TCPSite(runner, host, port, **site).start()  # type: ignore[arg-type]
        except OSError as exc:
            reason = _BIND_REASONS.get(exc.errno or 0) if not isinstance(exc, socket.gaierror) else \
                "the host name does not resolve"
            raise ListenerError(f"server.{name}: cannot listen on {address}: "
                                f"{reason or exc.strerror or exc}") from exc
        return _url_of(runner)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])
            self._ticker = None
            self._publish()  # the last numbers of a worker that stops still count in worker 0's sums
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.handler is not None:
            await self.handler.close()
        if self.upstream is not None:
            await self.upstream.close()
        await self.tiers.close()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def snapshots(self) -> list[Snapshot]:
        """This worker's live numbers and the other workers' latest ones (only worker 0 has others)."""
        own = snapshot_of(self.metrics, worker=self.worker_index, started_at=self.started_at, now=self.clock())
        return [own, *(self.workers.others() if self.workers is not None and not self.worker_index else [])]

    def reload(self, trigger: str = "POST /rules/reload") -> Reloaded:
        """Re-read the files this process started with and apply them at once; on any problem nothing changes,
        and the rejection is logged in one line whichever way the reload was asked for."""
        try:
            if self.sources is None:
                raise ConfigError(["this sidecache was started without files to reload"])
            config, rules = load_sources(self.sources)
        except ConfigError as exc:
            self.metrics.reloads["rejected"] += 1
            problems = "; ".join(p.strip() for p in exc.problems)
            log.error("worker %d: reload rejected, the old config and rules stay in force: %s (asked by %s)",
                      self.worker_index, problems, trigger)
            raise
        self.config, applied, waiting = live_config(self.config, config)
        self.rules = rules  # no await from here to the end: a request sees the old set or the new one
        if self.handler is not None:
            self.handler.use_rules(rules)
            self.handler.access_log = self._access_log()
        mem = self.config.memory
        self.memory.resize(max_entries=mem.max_entries, max_bytes=mem.max_bytes, max_entry_bytes=mem.max_entry_bytes)
        self.metrics.reloads["ok"] += 1
        log.info("worker %d: reloaded %d rules (asked by %s); %s", self.worker_index, len(rules.rules), trigger,
                 "; ".join(applied + waiting) or "config unchanged")
        for warning in rules.warnings:
            log.warning("worker %d: %s", self.worker_index, warning)
        return Reloaded(rules=len(rules.rules), applied=applied, restart_required=waiting)

    def reload_logged(self, trigger: str = "SIGHUP") -> None:
        """SIGHUP's reload: the outcome goes to the log, as there is no one to answer."""
        with contextlib.suppress(ConfigError):  # reload() has logged it
            self.reload(trigger)

    def _access_log(self) -> AccessLog | None:
        return AccessLog(sys.stdout.buffer) if self.config.server.access_log else None

    async def _tick(self) -> None:
        """Once a second: the dashboard's history, this worker's numbers for worker 0, reloads worker 0 asked for."""
        while True:
            await asyncio.sleep(TICK)
            try:
                self._publish()
            except OSError as exc:  # the shared folder went away: the supervisor is stopping us
                log.warning("worker %d: cannot publish metrics: %s", self.worker_index, exc)
            if self.workers is not None and self.worker_index and self.workers.reload_requested():
                self.reload_logged("worker 0")

    def _publish(self) -> None:
        if self.serve_admin:
            self.history.record(sample_of(merge(self.snapshots()), self.clock()))
        if self.workers is not None and self.worker_index:
            self.workers.write(snapshot_of(self.metrics, worker=self.worker_index, started_at=self.started_at,
                                           now=self.clock()))

    def _register_listener_gauges(self, server: ProxyServer) -> None:
        m = self.metrics
        m.gauges["sidecache_client_connections"] = lambda: [({}, float(server.open))]
        m.gauges["sidecache_client_connections_max"] = lambda: [({}, float(server.max_connections))]
        m.counters["sidecache_client_connections_refused"] = lambda: [({}, float(server.refused))]
        m.counters["sidecache_client_header_timeouts"] = lambda: [({}, float(server.header_timeouts))]
        if (fast := server.fast_lane) is not None:
            m.counters["sidecache_fast_lane_hits"] = lambda: [({}, float(fast.served))]
            m.counters["sidecache_fast_lane_replays"] = lambda: [({}, float(fast.replays.replayed))]
            m.counters["sidecache_fast_lane_followers"] = lambda: [({}, float(fast.followed))]
            m.counters["sidecache_fast_lane_misses"] = lambda: [({}, float(fast.misses))]

    def _parked(self) -> int:
        """Requests the fast lane holds on a fill (serving/parking.py): waiters like the slow path's."""
        fast = self.server.fast_lane if self.server is not None else None
        return fast.parked if fast is not None else 0

    def _register_gauges(self) -> None:
        m, mem = self.metrics, self.memory
        m.gauges["sidecache_cache_entries"] = lambda: [({"tier": "memory"}, float(len(mem)))]
        # what counts against max_bytes: entries, their keys and the request-target memo (memory.py)
        m.gauges["sidecache_cache_bytes"] = lambda: [({"tier": "memory"}, float(mem.bytes + mem.reserved))]
        m.counters["sidecache_cache_evictions"] = lambda: [({"tier": "memory"}, float(mem.evictions))]
        handler = self.handler
        assert handler is not None
        upstream = handler.upstream
        m.counters["sidecache_upstream_retries"] = lambda: [({}, float(upstream.retries))]
        m.gauges["sidecache_inflight_fills"] = lambda: [({}, float(len(handler.coalescer)))]
        m.gauges["sidecache_coalesced_waiters"] = lambda: [({}, float(handler.coalescer.waiters + self._parked()))]
        m.gauges["sidecache_cache_max_entries"] = lambda: [({"tier": "memory"}, float(mem.max_entries))]
        m.gauges["sidecache_cache_max_bytes"] = lambda: [({"tier": "memory"}, float(mem.max_bytes))]
        # Read at scrape time from the batch routes in force, so a reload's new routes show up by themselves.
        m.gauges["sidecache_batch_breaker_open"] = lambda: [
            ({"route": name}, 0.0 if b.batching else 1.0) for name, b in sorted(handler.batches.items())
            if b.breaker is not None]
        m.counters["sidecache_batch_breaker_opened"] = lambda: [
            ({"route": name}, float(b.breaker.opened)) for name, b in sorted(handler.batches.items())
            if b.breaker is not None]
        m.gauge_merge["sidecache_batch_breaker_open"] = "max"  # open in any worker
        if (redis := self.tiers.redis) is not None:
            m.gauges["sidecache_redis_up"] = lambda: [({}, 1.0 if redis.breaker.closed else 0.0)]
            m.counters["sidecache_redis_errors"] = lambda: [
                ({"error": e}, float(n)) for e, n in sorted(redis.errors.items())]
            # Each server known, as of its last PING (once a second); up only if every worker got an answer.
            m.gauges["sidecache_redis_node_up"] = lambda: [
                ({"mode": redis.mode, "node": n.address, "role": n.role}, 1.0 if n.up else 0.0) for n in redis.nodes]
            m.gauge_merge["sidecache_redis_node_up"] = "min"



_BIND_REASONS: Final = {
    errno.EADDRINUSE: "the address is already in use (another sidecache, or another listener of this one?)",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def _url_of(runner: web.BaseRunner) -> str:
    host, port = runner.addresses[-1][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
