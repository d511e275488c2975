"""A worker's Metrics as plain data, so worker 0 can show the sum of every `--workers` process in one scrape.

The snapshot is generic over Metrics' attributes: every `Counter` is summed and every dict of Histograms is
merged bucket by bucket (with its quantile sketch), so a counter another part adds to Metrics crosses processes
without changes here.
Registered gauges and counters are read once and sent as samples; gauges are summed unless `gauge_merge` says
"max" or "min".
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from proxy.telemetry.metrics import Histogram, Metrics
from proxy.telemetry.sketch import Sketch

FORMAT: Final = 2  # 2: histograms carry their quantile sketch
Key = str | int | list[str | int]
Samples = list[tuple[dict[str, str], float]]


class SketchData(msgspec.Struct, array_like=True, frozen=True):
    """One quantile sketch as numbers: (bucket, count) pairs, zeros, exact min and max."""

    alpha: float
    bins: list[tuple[int, int]]
    zeros: int
    min: float
    max: float

    @classmethod
    def of(cls, s: Sketch) -> SketchData:
        return cls(s.alpha, list(s.bins.items()), s.zeros, s.min, s.max)

    def sketch(self) -> Sketch:
        s = Sketch(self.alpha)
        s.bins, s.zeros, s.min, s.max = dict(self.bins), self.zeros, self.min, self.max
        s.count = self.zeros + sum(n for _, n in self.bins)
        return s


class HistogramData(msgspec.Struct, array_like=True, frozen=True):
    """One Histogram's buckets and its sketch as numbers."""

    bounds: list[float]
    counts: list[int]
    sum: float
    sketch: SketchData


class Snapshot(msgspec.Struct, kw_only=True, frozen=True):
    """Everything one worker has counted, at one moment."""

    format: int = FORMAT
    worker: int
    pid: int
    started_at: float
    written_at: float
    counters: dict[str, list[tuple[Key, int]]]
    histograms: dict[str, dict[str, HistogramData]]
    gauges: dict[str, Samples]
    gauge_merge: dict[str, str]
    sampled_counters: dict[str, Samples]

    @property
    def requests(self) -> int:
        return sum(n for _, n in self.counters.get("requests", []))


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Snapshot)


def snapshot_of(m: Metrics, *, worker: int, started_at: float, now: float) -> Snapshot:
    """Copy the numbers out of a live Metrics (the registered readers are called once, here)."""
    counters: dict[str, list[tuple[Key, int]]] = {}
    histograms: dict[str, dict[str, HistogramData]] = {}
    for name, value in vars(m).items():
        if isinstance(value, Counter):
            counters[name] = [(list(k) if isinstance(k, tuple) else k, n) for k, n in value.items()]
        elif isinstance(value, dict) and value and all(isinstance(h, Histogram) for h in value.values()):
            histograms[name] = {r: HistogramData(list(h.bounds), list(h.counts), h.sum, SketchData.of(h.sketch))
                                for r, h in value.items()}
    return Snapshot(
        worker=worker, pid=os.getpid(), started_at=started_at, written_at=now, counters=counters,
        histograms=histograms, gauges={n: read() for n, read in m.gauges.items()}, gauge_merge=dict(m.gauge_merge),
        sampled_counters={n: read() for n, read in m.counters.items()},
    )


def encode(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode(data: bytes) -> Snapshot | None:
    """None for a snapshot of another format or a torn file: that worker is simply left out of this scrape."""
    try:
        snap = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return snap if snap.format == FORMAT else None


def merge(snapshots: Iterable[Snapshot]) -> Metrics:
    """One Metrics holding the sum of every snapshot; registered readers become fixed samples."""
    out = Metrics()
    gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    counted: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for snap in snapshots:
        for name, pairs in snap.counters.items():
            target = getattr(out, name, None)
            if not isinstance(target, Counter):
                target = Counter()
                setattr(out, name, target)
            for k, n in pairs:
                target[tuple(k) if isinstance(k, list) else k] += n
        for name, hists in snap.histograms.items():
            into = getattr(out, name, None)
            if not isinstance(into, dict):
                into = {}
                setattr(out, name, into)
            for route, data in hists.items():
                h = Histogram(tuple(data.bounds))
                h.counts, h.sum, h.count = list(data.counts), data.sum, sum(data.counts)
                h.sketch = data.sketch.sketch()
                if route in into and into[route].bounds == h.bounds:
                    into[route].merge(h)
                else:
                    into[route] = h
        out.gauge_merge.update(snap.gauge_merge)
        _add(gauges, snap.gauges, lambda name: out.gauge_merge.get(name, "sum"))
        _add(counted, snap.sampled_counters, lambda name: "sum")
    out.gauges = {name: _fixed(v) for name, v in gauges.items()}
    out.counters = {name: _fixed(v) for name, v in counted.items()}
    return out


def _add(into: dict[str, dict[tuple[tuple[str, str], ...], float]], samples: dict[str, Samples],
         mode: Callable[[str], str]) -> None:
    for name, rows in samples.items():
        acc = into.setdefault(name, {})
        how = mode(name)
        for labels, value in rows:
            key = tuple(sorted(labels.items()))
            if key not in acc:
                acc[key] = value
            elif how == "max":
                acc[key] = max(acc[key], value)
            elif how == "min":
                acc[key] = min(acc[key], value)
            else:
                acc[key] += value


def _fixed(values: dict[tuple[tuple[str, str], ...], float]) -> Callable[[], Samples]:
    rows = [(dict(k), v) for k, v in values.items()]
    return lambda: rows
