"""The exceptions sidecache raises, mapped to HTTP in one place (handler.py).

    ProxyError
    ├── ConfigError            a config or rules file is wrong; the proxy refuses to start
    ├── UpstreamError          the backend could not give a complete answer  -> 502
    │   ├── UpstreamConnectError   refused, reset, DNS                        -> 502
    │   ├── UpstreamTimeout        connect or read timeout (also a TimeoutError) -> 504
    │   └── UpstreamBusy           no pooled connection came free in time        -> 503
    ├── ListenerError          a listener cannot bind its address; the proxy refuses to start
    └── CacheBackendError      Redis failed; never fails a request, only degrades the cache
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error sidecache raises on purpose."""


class ConfigError(ProxyError):
    """One or more problems in config or rules files, each naming the file and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UpstreamError(ProxyError):
    """The upstream did not answer completely; nothing from this attempt is cached."""

    def __init__(self, message: str, *, url: str = "") -> None:
        self.url = url
        super().__init__(message)


class UpstreamConnectError(UpstreamError):
    """The upstream refused or dropped the connection."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream took longer than the configured connect or read timeout."""


class UpstreamBusy(UpstreamError):
    """Every pooled connection stayed in use for `pool_timeout`: the backend is saturated, try again shortly."""


class ListenerError(ProxyError):
    """A listener could not bind its address (in use, not resolvable, not local); the message names it."""


class CacheBackendError(ProxyError):
    """A shared cache tier (Redis) failed; callers log it, count it and carry on without it."""
