"""How old a response already is when it arrives: the `Age` field and RFC 9111 4.2.3's corrected initial age."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.policy.cache_control import DELTA_MAX


def parse_age(lines: Iterable[str]) -> int | None:
    """The Age field's value: the first member of a list, ignored unless a non-negative integer (RFC 9111 5.1)."""
    first = ",".join(lines).split(",", 1)[0].strip(" \t")
    if not first or not first.isascii() or not first.isdigit():
        return None
    return min(int(first), DELTA_MAX)


def initial_age(age_value: int | None, date_value: float | None, request_time: float, response_time: float) -> float:
    """corrected_initial_age (RFC 9111 4.2.3): the larger of what the clocks say (response time minus Date, in
    whole seconds as Date has no finer grain) and what the caches on the way said (Age) plus our own delay."""
    apparent_age = max(0.0, float(int(response_time - date_value))) if date_value is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (age_value or 0) + response_delay
    return max(apparent_age, corrected_age_value)
