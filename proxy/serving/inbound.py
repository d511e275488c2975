"""One client request as the data path sees it, read once at dispatch and passed down (never the aiohttp request,
which a background fill or refresh must not hold past its response)."""

from __future__ import annotations

from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

from proxy.config.rules import CompiledRule


class Inbound:
    """Method, target as sent, the headers, where it came from, when it started; rule, params and key once matched.

    `path` and `query` are decoded on first use only: a remembered hit never needs them."""

    __slots__ = ("method", "raw_path", "headers", "peer", "scheme", "host", "started", "rule", "params", "key",
                 "pattern", "forced", "_url")

    def __init__(self, method: str, raw_path: str, headers: CIMultiDictProxy[str], *, peer: str | None, scheme: str,
                 host: str | None, started: float) -> None:
        self.method = method
        self.raw_path = raw_path  # path and query, byte for byte as the client sent them
        self.headers = headers
        self.peer = peer
        self.scheme = scheme
        self.host = host
        self.started = started  # perf_counter at dispatch
        self.rule: CompiledRule | None = None
        self.params: dict[str, str] = {}  # decoded path parameters (tags, batch items, echo)
        self.key = ""
        self.pattern = 0
        self.forced = False  # the rule's `refresh_when` holds: fetch, and store under the plain key
        self._url: URL | None = None

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

    @property
    def route(self) -> str:
        """The metrics and log label: the rule's name, `-` without one."""
        return self.rule.name if self.rule is not None else "-"
