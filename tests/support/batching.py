"""The batching tests' setup: the prop-analysis rule with its batch section (knobs filled in per test), prop
requests as the UI sends them, and the sample A1Betting backend with an in-flight gauge per route."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.devtools.sample_backend import SampleBackend
from proxy.devtools.sample_data import player_team

PROP = "/mlb/enhanced-prop-analysis"
BATCH = "/api/v1/optimized/batch-prop-analysis"
PLAYERS = ("Aaron Judge", "Mookie Betts", "Shohei Ohtani", "Juan Soto", "Freddie Freeman", "Mike Trout")
RULE = """
[[route]]
name = "prop-analysis"
match = "GET /mlb/enhanced-prop-analysis/{prop_id}"
ttl = "5m"
key = ["query.player_name", "query.stat_type", "query.line", "query.team", "query.matchup"]
echo = ["prop_id"]
share = "all-users"
uncacheable_bodies = ["null"]
  [route.batch]
  to = "POST /api/v1/optimized/batch-prop-analysis"
  group_by = "GROUP"
  window = "WINDOW"
  max_items = MAX
  body = { requests = "$items", use_cache = true }
  results = "successful"
  failures = "failed"
  match_on = "prop_id"
  linger = "LINGER"
EXTRA
    [route.batch.item]
    prop_id = "path.prop_id"
    player_name = "query.player_name"
    stat_type = "query.stat_type"
    line = "query.line:float"
    team = "query.team"
    matchup = "query.matchup"
"""


# A route whose every miss goes as a batch call, even alone (`linger = "0s"`): for the tests of the upstream pools.
ITEM_BATCH = """
[[route]]
name = "item"
match = "GET /items/{id}"
ttl = "5m"
  [route.batch]
  to = "POST /batch"
  group_by = "path.id"
  window = "1ms"
  linger = "0s"
  body = { requests = "$items" }
  match_on = "id"
  on_item_error = "fail"
    [route.batch.item]
    id = "path.id"
"""


def rule(window: str = "50ms", max_items: int = 50, group: str = "query.player_name", linger: str = "1ms",
         **knobs: object) -> str:
    """The rule; linger "0s" turns adaptive dispatch off, so a window waits its whole length as it used to."""
    extra = "\n".join(f'  {k} = "{v}"' if isinstance(v, str) else f"  {k} = {v}" for k, v in knobs.items())
    return (RULE.replace("GROUP", group).replace("WINDOW", window).replace("MAX", str(max_items))
            .replace("LINGER", linger).replace("EXTRA", extra))


def prop(name: str, n: int, prop_id: str | None = None, **over: object) -> str:
    """A prop request as the UI sends it; n picks the stat and line, so each n is its own analysis."""
    team = player_team(name) or "NYY"
    q = {"player_name": name, "stat_type": ("hits", "runs", "home_runs", "rbi")[n % 4], "line": 0.5 + n // 4,
         "team": team, "matchup": f"{team} vs BOS", **over}
    return f"{PROP}/{prop_id or f'{name[:3]}-{n}'}?{urlencode(q)}"


@dataclass
class Backend:
    """The sample backend on a loopback port, with an in-flight gauge per route and a switch to drop batch calls."""

    sample: SampleBackend
    url: str = ""
    inflight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    drop_batch: bool = False

    @web.middleware
    async def gauge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = "batch" if request.path == BATCH else "single"
        if route == "batch" and self.drop_batch:
            assert request.transport is not None
            request.transport.close()  # the connection goes away without an answer
            return web.Response()
        self.inflight[route] = self.inflight.get(route, 0) + 1
        self.peak[route] = max(self.peak.get(route, 0), self.inflight[route])
        try:
            return await handler(request)
        finally:
            self.inflight[route] -= 1

    def batch_bodies(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(r.body) for r in self.sample.received if r.route == "batch-prop-analysis"]


async def post(http: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, dict[str, str], Any]:
    """A client's own batch call through `url`: status, headers and the decoded JSON (None for an empty body)."""
    async with http.post(url + BATCH, json=body, **kw) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)
