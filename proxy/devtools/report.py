"""The benchmark's report: one printed row per measurement, its target and whether it was met."""

from __future__ import annotations

from dataclasses import dataclass, field


def ratio_of(x: float) -> tuple[str, float]:
    """A ratio to 3 significant digits ("0.999x", "1.60x") and the value printed, which is what a target is
    judged on: a reader never sees "1.00x NOT MET"."""
    text = f"{x:#.3g}".rstrip(".")
    return f"{text}x", float(text)


def median(values: list[float]) -> float:
    """The middle value (the upper one of an even count), as every row of several runs reports it."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@dataclass
class Row:
    """One measured line of the report, with its target when the issue sets one."""

    name: str
    value: str
    target: str = ""
    met: bool | None = None
    score: float | None = None  # how many times over its target (>= 1 is met), for the chart


@dataclass
class Report:
    started: str
    load_generator: str
    upstream_latency_ms: float
    config: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, object] = field(default_factory=dict)

    def add(self, name: str, value: str, target: str = "", score: float | None = None) -> None:
        """A row; with a score (measured over target, 1.0 = just met), it is a target met or not."""
        met = None if score is None else score >= 1.0
        self.rows.append(Row(name, value, target, met, score))
        mark = "" if met is None else ("  met" if met else "  NOT MET")
        print(f"  {name:<52} {value:<34} {target}{mark}", flush=True)
