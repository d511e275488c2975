"""Wiring: one Sidecar owns the clients, tiers and both listeners for the life of the process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from . import admin
from .config import Config, check_admin_exposure, parse_hostport
from .errors import ConfigError
from .handler import ProxyHandler
from .memory_tier import MemoryTier
from .metrics import Metrics
from .rules import RuleSet
from .tiers import TieredCache
from .upstream import UpstreamClient

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
        self.tiers = TieredCache(self.memory, clock)
        self.started_at = clock()
        self._runners: list[web.BaseRunner] = []
        self.upstream: UpstreamClient | None = None
        self.handler: ProxyHandler | None = None
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
        self.upstream = UpstreamClient(self.config.upstream)
        self.handler = ProxyHandler(self.rules, self.tiers, self.upstream, self.metrics, clock=self.clock)
        self._register_gauges()
        server = web.Server(self.handler, access_log=None, handler_cancellation=True)
        runner = web.ServerRunner(server, handle_signals=False, access_log=None, shutdown_timeout=5)
        await runner.setup()
        self._runners.append(runner)
        host, port = parse_hostport(self.config.server.listen)
        site = web.TCPSite(runner, host, port, reuse_port=self.reuse_port or None, backlog=1024)
        await site.start()
        self.proxy_url = _url_of(runner)
        if self.serve_admin:
            admin_runner = web.AppRunner(admin.build_admin_app(self), handle_signals=False, access_log=None)
            await admin_runner.setup()
            self._runners.append(admin_runner)
            ahost, aport = parse_hostport(self.config.server.admin)
            asite = web.TCPSite(admin_runner, ahost, aport)
            await asite.start()
            self.admin_url = _url_of(admin_runner)

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.upstream is not None:
            await self.upstream.close()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _register_gauges(self) -> None:
        m, mem = self.metrics, self.memory
        m.gauges["sidecache_cache_entries"] = lambda: [({"tier": "memory"}, float(len(mem)))]
        m.gauges["sidecache_cache_bytes"] = lambda: [({"tier": "memory"}, float(mem.bytes))]
        m.counters["sidecache_cache_evictions"] = lambda: [({"tier": "memory"}, float(mem.evictions))]
        handler = self.handler
        assert handler is not None
        m.gauges["sidecache_inflight_fills"] = lambda: [({}, float(len(handler.coalescer)))]



def _url_of(runner: web.BaseRunner) -> str:
    host, port = runner.addresses[-1][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
