"""The circuit breaker as a table of steps against a hand-driven clock."""

from __future__ import annotations

import pytest

from proxy.concurrency.breaker import Breaker


def make(now: list[float], changes: list[bool]) -> Breaker:
    return Breaker(failures=3, probe_min=0.5, probe_max=2.0, clock=lambda: now[0], on_change=changes.append)


@pytest.mark.parametrize(
    ("steps", "closed", "probe_in", "changes"),
    [
        ("", True, 0.0, []),
        ("ff", True, 0.0, []),  # under the threshold: still calling
        ("ffsff", True, 0.0, []),  # a success resets the count: failures must be consecutive
        ("fff", False, 0.5, [False]),
        ("fffp", False, 1.0, [False]),  # each failed probe doubles the wait ...
        ("fffppp", False, 2.0, [False]),  # ... up to probe_max
        ("ffffffffff", False, 0.5, [False]),  # calls in flight when it opened, failing after: no doubling
        ("fffffffs", True, 0.0, [False, True]),  # one answer closes it, and the backoff starts over
        ("fffsfff", False, 0.5, [False, True, False]),
        ("t", False, 0.5, [False]),  # tripped at start-up without waiting for three failures
    ],
)
def test_breaker_steps(steps: str, closed: bool, probe_in: float, changes: list[bool]) -> None:
    now, seen = [100.0], []
    b = make(now, seen)
    for step in steps:
        {"f": b.failed, "p": b.probe_failed, "s": b.succeeded, "t": b.trip}[step]()
    assert (b.closed, b.probe_in(), seen) == (closed, probe_in, changes)


def test_probe_comes_due_as_the_clock_moves() -> None:
    now: list[float] = [100.0]
    b = make(now, [])
    for _ in range(3):
        b.failed()
    now[0] += 0.3
    assert b.probe_in() == pytest.approx(0.2)
    now[0] += 1
    assert b.probe_in() == 0.0


def test_healthy_means_closed_and_no_failure_since_the_last_success() -> None:
    b = make([0.0], [])
    assert b.healthy
    b.failed()
    assert b.closed and not b.healthy  # a request skips optional calls after one failure, before the breaker opens
    b.succeeded()
    assert b.healthy
