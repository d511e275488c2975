"""The types of conftest's factory fixtures, for test signatures: `make_proxy(...)` and `redis_factory(...)`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.app import Sidecar

from .processes import RedisServer

ProxyFactory = Callable[..., Awaitable[Sidecar]]
RedisFactory = Callable[..., RedisServer]
