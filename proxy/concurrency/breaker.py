"""A circuit breaker: after N consecutive failures stop calling; probe with a backoff that doubles per failed probe."""

from __future__ import annotations

from collections.abc import Callable


class Breaker:
    """Closed: calls go through. Open: they do not, and a prober may try once `probe_in()` reaches zero.

    It holds no timers and no tasks: time comes from the injected clock, so tests step it by hand.
    """

    def __init__(
        self,
        *,
        failures: int,
        probe_min: float,
        probe_max: float,
        clock: Callable[[], float],
        on_change: Callable[[bool], None] = lambda closed: None,
    ) -> None:
        self.threshold = failures
        self.probe_min = probe_min
        self.probe_max = probe_max
        self.clock = clock
        self.on_change = on_change
        self.failures = 0  # consecutive
        self.opened = 0  # times it went from closed to open
        self._closed = True
        self._backoff = probe_min
        self._next_probe = 0.0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def healthy(self) -> bool:
        """Closed and the last call succeeded: worth an optional call that a request would wait on."""
        return self._closed and self.failures == 0

    def succeeded(self) -> None:
        self.failures = 0
        self._backoff = self.probe_min
        if not self._closed:
            self._closed = True
            self.on_change(True)

    def failed(self, calls: int = 1) -> None:
        """More failed calls (a batch counts each of its own); opens at the threshold. Calls that were in flight
        when it opened and fail after it leave the probe schedule alone: only a failed probe says the backend is
        still away."""
        self.failures += calls
        if self._closed and self.failures >= self.threshold:
            self.trip()

    def probe_failed(self) -> None:
        """The probe got no answer: the wait to the next one doubles, up to `probe_max`."""
        self.failures += 1
        if self._closed:
            return
        self._backoff = min(self._backoff * 2, self.probe_max)
        self._next_probe = self.clock() + self._backoff

    def trip(self) -> None:
        """Open now (a failed check at start-up need not wait for N request failures)."""
        self.failures = max(self.failures, 1)
        if not self._closed:
            return
        self._closed = False
        self.opened += 1
        self._backoff = self.probe_min
        self._next_probe = self.clock() + self._backoff
        self.on_change(False)

    def probe_in(self) -> float:
        """Seconds until the next probe is due (0 when due now or when closed)."""
        return 0.0 if self._closed else max(0.0, self._next_probe - self.clock())
