"""The access log: one JSON line per proxied request on stdout, written only when switched on.

`bytes` is the body sent to the client (0 for a HEAD or a 304), whatever the outcome; `ts` is RFC 3339, as in the
application log's JSON format (telemetry/logs.py).

Off (the default) the handler holds None and pays one `is not None` test per request; nothing is formatted.
"""

from __future__ import annotations

import time
from typing import BinaryIO

import msgspec

from proxy.telemetry.logs import rfc3339


class AccessLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What happened to one request; times in milliseconds."""

    ts: str
    method: str
    path: str
    route: str
    cache: str  # the Cache-Status header sent
    status: int
    bytes: int
    total_ms: float
    upstream_ms: float | None = None  # the upstream call that produced this answer, if there was one


class AccessLog:
    """Writes AccessLine JSON to a binary stream, a line at a time (flushed, so `tail -f` sees it)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._encoder = msgspec.json.Encoder()

    def write(self, method: str, path: str, route: str, cache: str, status: int, size: int, total_s: float,
              upstream_s: float | None) -> None:
        line = AccessLine(
            ts=rfc3339(time.time()), method=method, path=path, route=route, cache=cache, status=status, bytes=size,
            total_ms=round(total_s * 1000, 3), upstream_ms=None if upstream_s is None else round(upstream_s * 1000, 3),
        )
        self.stream.write(self._encoder.encode(line) + b"\n")
        self.stream.flush()
