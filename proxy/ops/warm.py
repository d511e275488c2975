"""`POST /warm`: fill the cache by sending requests to the proxy's own listener over loopback.

Going through the listener, rather than around it, means a warm-up is a client like any other: coalescing,
batching, storing rules and the metrics all apply, and what it reports is what a real request would have met.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Final, Literal
from urllib.parse import quote, urlencode

import aiohttp
import msgspec
from msgspec import Meta
from yarl import URL

from proxy import __version__
from proxy.config.rules import CompiledRule, RuleSet
from proxy.policy.cache_status import CacheStatus

MAX_ITEMS: Final = 10_000
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CTL: Final = re.compile(r"[\x00\r\n]")
_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")  # the `match` syntax of rules.compile_pattern
# Details that say how an answer was made, not why it was not stored.
_BENIGN: Final = frozenset({"batched", "batch-fallback", "redis-unavailable"})
Result = Literal["stored", "fresh", "refreshing", "failed"]
Value = str | int | float | bool | list[str]


class WarmItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One request to send: path as the client would send it, query without the `?`."""

    method: str = "GET"
    path: str
    query: str = ""
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        # The path is appended to the proxy's own address: "//host" or "@host" there would send it elsewhere.
        if not self.path.startswith("/") or self.path.startswith("//"):
            raise ValueError(f"`path` must start with a single /, got {self.path!r}")
        if any(h.lower() == "host" for h in self.headers):
            raise ValueError("`headers` may not set Host: warm requests go to this proxy's own listener")
        for name, value in self.headers.items():
            if not _TOKEN.fullmatch(name):  # RFC 9110 5.1
                raise ValueError(f"`headers`: {name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
            if _CTL.search(value):  # CR or LF would start another header or end the request
                raise ValueError(f"`headers`: the value of {name!r} holds a control character (CR, LF or NUL)")


class WarmRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Either explicit `requests`, or a `route` and one `params` object per request to build from its pattern."""

    requests: list[WarmItem] | None = None
    route: str | None = None
    params: list[dict[str, Value]] | None = None
    concurrency: Annotated[int, Meta(ge=1, le=64)] = 8

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.route is None) or (self.route is None) != (self.params is None):
            raise ValueError("give either `requests`, or `route` with `params`")
        if len(self.requests or self.params or []) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} items in one call")


class WarmResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one warm-up request met."""

    method: str
    path: str
    result: Result
    status: int | None = None
    cache_status: str | None = None
    reason: str | None = None


class WarmReport(msgspec.Struct, frozen=True, kw_only=True):
    stored: int
    fresh: int
    refreshing: int
    failed: int
    results: list[WarmResult]


def items_for(rule: CompiledRule, params: list[dict[str, Value]]) -> list[WarmItem | WarmResult]:
    """One request per params object: path parameters fill the rule's pattern, the rest become the query."""
    patterns = [p for p in rule.route.patterns if _methods(p) & {"GET", "*"}]
    out: list[WarmItem | WarmResult] = []
    for given in params:
        for pattern in patterns:
            path = pattern.strip().partition(" ")[2].strip()
            names = {m.group(1) for m in _PARAM.finditer(path)}
            if names <= given.keys():
                break
        else:
            need = sorted({m.group(1) for p in patterns for m in _PARAM.finditer(p)} - given.keys())
            out.append(WarmResult(method="GET", path=str(given), result="failed",
                                  reason=f"missing path parameter(s) {', '.join(need)} for route {rule.name}"))
            continue
        filled = _expand(path, given)
        query = urlencode([(k, one) for k, v in given.items() if k not in names for one in _values(v)])
        out.append(WarmItem(path=filled, query=query))
    return out


def result_of(cache_status: str) -> tuple[Result, str | None]:
    """Read a Cache-Status header (RFC 9211) as a warm-up outcome and, when it failed, why."""
    cs = CacheStatus.parse(cache_status)
    if cs is None:
        return "failed", f"unexpected Cache-Status {cache_status!r}"
    problems = [d for d in cs.detail if d not in _BENIGN]
    if cs.hit:
        return "fresh", None
    if cs.fwd == "stale":
        if "stale-if-error" in problems:
            return "failed", (f"upstream failed ({cs.fwd_status or '?'}); an older copy is served meanwhile "
                              "(stale-if-error)")
        return "refreshing", None
    if cs.fwd == "miss":
        if cs.stored or (cs.collapsed and not problems):
            return "stored", None
        return "failed", f"not stored: {', '.join(problems) or 'unknown reason'}"
    if cs.fwd == "bypass":
        return "failed", f"not cached: {', '.join(problems) or 'bypass'}"
    return "failed", f"unexpected Cache-Status {cache_status!r}"


async def warm(proxy_url: str, rules: RuleSet, items: list[WarmItem | WarmResult], concurrency: int) -> WarmReport:
    """Send every item through the proxy listener, at most `concurrency` at once, and report each."""
    limit = asyncio.Semaphore(concurrency)
    base = loopback(proxy_url)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:

        async def one(item: WarmItem | WarmResult) -> WarmResult:
            if isinstance(item, WarmResult):
                return item
            async with limit:
                return await _send(http, base, rules, item)

        results = await asyncio.gather(*(one(i) for i in items))
    count = {r: sum(1 for x in results if x.result == r) for r in ("stored", "fresh", "refreshing", "failed")}
    return WarmReport(**count, results=list(results))


async def _send(http: aiohttp.ClientSession, base: str, rules: RuleSet, item: WarmItem) -> WarmResult:
    target = item.path + (f"?{item.query}" if item.query else "")
    url = URL(base + target)
    method = item.method.upper()
    if method != "GET":
        return WarmResult(method=method, path=target, result="failed",
                          reason="only GET answers are cached; warm sends nothing else")
    matched = rules.match("GET", url.path)
    if matched is None:
        return WarmResult(method=method, path=target, result="failed", reason=f"no rule caches GET {url.path}")
    if not matched[0].cacheable:
        return WarmResult(method=method, path=target, result="failed",
                          reason=f"rule {matched[0].name} never stores (ttl = \"0s\")")
    headers = {"User-Agent": f"sidecache-warm/{__version__}", **item.headers}
    try:
        async with http.get(url, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            cache_status = resp.headers.get("Cache-Status", "")
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return WarmResult(method=method, path=target, result="failed", reason=f"proxy listener: {exc!r}")
    result, reason = result_of(cache_status)
    return WarmResult(method=method, path=target, result=result, status=status, cache_status=cache_status,
                      reason=reason)


def loopback(url: str) -> str:
    """The proxy listener as reached from this host: a wildcard bind is reached on loopback."""
    u = URL(url)
    if u.host in ("0.0.0.0", ""):
        return str(u.with_host("127.0.0.1")).rstrip("/")
    if u.host == "::":
        return f"http://[::1]:{u.port}"
    return url.rstrip("/")


def _expand(path: str, given: dict[str, Value]) -> str:
    """`/players/{name}` with name "Aaron Judge" -> `/players/Aaron%20Judge`; `{rest...}` keeps its slashes."""
    return _PARAM.sub(lambda m: quote(str(given[m.group(1)]), safe="/" if m.group(2) else ""), path)


def _methods(pattern: str) -> set[str]:
    return {m.strip().upper() for m in pattern.strip().partition(" ")[0].split("|")}


def _values(v: Value) -> list[str]:
    if isinstance(v, list):
        return [str(x) for x in v]
    if isinstance(v, bool):
        return ["true" if v else "false"]
    return [str(v)]
