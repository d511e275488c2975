"""The application log's two formats: text for a terminal, JSON lines (the access log's field names) for a
log pipeline.

In JSON both logs share `ts` (RFC 3339, UTC, milliseconds); the application log adds `level`, `logger` and
`msg`. The application log goes to stderr; the access log keeps stdout, so either can be shipped on its own.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

LogFormat = Literal["text", "json"]
LEVELS: Final = ("debug", "info", "warning", "error")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def rfc3339(t: float) -> str:
    """Unix seconds as `2026-12-01T22:30:00.123Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One application log record as JSON."""

    ts: str
    level: str
    logger: str
    msg: str
    error: str | None = None  # the exception's traceback, when the record carries one


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: a multi-line message stays one line (newlines are escaped)."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        line = LogLine(ts=rfc3339(record.created), level=record.levelname.lower(), logger=record.name,
                       msg=record.getMessage(),
                       error=self.formatException(record.exc_info) if record.exc_info else None)
        return self._encoder.encode(line).decode()


def configure(level: str = "info", fmt: LogFormat = "text") -> None:
    """Route the application log to stderr in the chosen format, replacing any earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
