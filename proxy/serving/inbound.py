"""One client request as the data path sees it, read once at dispatch and passed down (never the aiohttp request,
which a background fill or refresh must not hold past its response)."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

from proxy.config.rules import CompiledRule


class Inbound:
    """Method, target as sent, the headers, where it came from, when it started; rule, params and key once matched.

    `path` and `query` are decoded on first use only: a remembered hit never needs them."""

    __slots__ = ("method", "raw_path", "headers", "started", "rule", "route", "params", "key", "pattern", "forced",
                 "_url",
                 "_request", "_peer", "_scheme", "_host")

    def __init__(self, request: web.BaseRequest, started: float) -> None:
        self.method = request.method
        self.raw_path = request.raw_path  # path and query, byte for byte as the client sent them
        self.headers = request.headers
        self.started = started  # perf_counter at dispatch
        # Where it came from is read from the connection only when needed (a hit never needs it), and kept by
        # `detach` before anything outlives the handler.
        self._request: web.BaseRequest | None = request
        self._peer: str | None = None
        self._scheme = "http"
        self._host: str | None = None
        self.rule: CompiledRule | None = None
        self.route = "-"  # the metrics and log label: the rule's name, `-` without one
        self.params: dict[str, str] = {}  # decoded path parameters (tags, batch items, echo)
        self.key = ""
        self.pattern = 0
        self.forced = False  # the rule's `refresh_when` holds: fetch, and store under the plain key
        self._url: URL | None = None

    @classmethod
    def parsed(cls, method: str, raw_path: str, headers: CIMultiDictProxy[str], started: float, peer: str | None,
               host: str | None) -> Inbound:
        """A request the fast lane parsed itself: no aiohttp request behind it, what the connection says given."""
        inb = cls.__new__(cls)
        inb.method, inb.raw_path, inb.headers, inb.started = method, raw_path, headers, started
        inb._request, inb._peer, inb._scheme, inb._host = None, peer, "http", host
        inb.rule, inb.route, inb.params, inb.key, inb.pattern, inb.forced, inb._url = None, "-", {}, "", 0, False, None
        return inb

    def detach(self) -> Inbound:
        """Read what the connection says of the request, and let go of it: a fill or refresh may outlive it."""
        if self._request is not None:
            request, self._request = self._request, None
            self._peer, self._scheme, self._host = request.remote, request.scheme, request.host
        return self

    @property
    def peer(self) -> str | None:
        return self.detach()._peer

    @property
    def scheme(self) -> str:
        return self.detach()._scheme

    @property
    def host(self) -> str | None:
        return self.detach()._host

    @property
    def url(self) -> URL:
        if self._url is None:
            self._url = URL(self.raw_path, encoded=True)
        return self._url

    @property
    def path(self) -> str:
        return self.url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.url.query

    def use(self, rule: CompiledRule, params: dict[str, str], pattern: int = 0, key: str = "") -> None:
        """The rule that matched, with its decoded path parameters and pattern (and the key, once known)."""
        self.rule, self.route, self.params, self.pattern, self.key = rule, rule.name, params, pattern, key
