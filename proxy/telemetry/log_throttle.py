"""One log line per kind of failure per interval: a dead backend under load must not write a line per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Final

MAX_KEYS: Final = 1024  # kinds remembered; past it the memory starts over (a line may then come early)


class LogThrottle:
    """WARNING lines keyed by what failed (route and error kind): the first of a key is written, the others within
    `interval` are counted, and the next line written for that key says how many were held back."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (when its last line was written, held back)

    def warning(self, key: Hashable, message: str, *args: object) -> bool:
        """Log `message % args` unless a line for `key` went out less than `interval` ago; True when written."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            message += " (%d more like it in the last %.0fs)"
            args = (*args, last[1], now - last[0])
        if len(self._last) >= MAX_KEYS and key not in self._last:
            self._last.clear()
        self._last[key] = (now, 0)
        self.logger.warning(message, *args)
        return True
