"""Durations ("200ms", "5m", "1h30m") and sizes ("64MiB") as they are written in config and rules files.

A duration is one or more parts `<number><unit>`, units ms, s, m, h and d (a day is 24 h), largest first and
each at most once: "250ms", "1.5s", "90s", "1h30m", "2d12h". A size is a whole number of bytes, bare or with
B, KB, KiB, MB, MiB, GB or GiB.
"""

from __future__ import annotations

import re
from typing import Any, Final

_PART: Final = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)"
_DURATION: Final = re.compile(rf"^\s*{_PART}(?:\s*{_PART})*\s*$")
_PARTS: Final = re.compile(_PART)
_ORDER: Final = ("d", "h", "m", "s", "ms")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION: Final = 365 * 86400.0  # longer is a typo, and would overflow what Redis takes as an expiry
_SIZE: Final = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS: Final = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3
}


class Duration(float):
    """Seconds, remembering the text it was written as, so `/rules` shows what the user wrote."""

    text: str

    @classmethod
    def parse(cls, value: object) -> Duration:
        parts = _PARTS.findall(value) if isinstance(value, str) and _DURATION.match(value) else []
        ranks = [_ORDER.index(unit) for _, unit in parts]
        if not parts or ranks != sorted(set(ranks)):  # "30m1h" or "1m1m" is more likely a typo than meant
            raise ValueError(f"Expected a duration such as \"200ms\", \"30s\", \"5m\", \"24h\", got {value!r}")
        d = cls(sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts))
        if d > MAX_DURATION:
            raise ValueError(f"Expected a duration of at most 365d, got {value!r}")
        d.text = str(value).strip()
        return d

    @classmethod
    def of(cls, text: str) -> Duration:
        return cls.parse(text)


class ByteSize(int):
    """A number of bytes, written as 1048576, "512KiB" or "64MiB"."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(value)
        if isinstance(value, str) and (m := _SIZE.match(value)):
            return cls(int(m.group(1)) * _SIZE_UNITS[m.group(2)])
        raise ValueError(f"Expected a size in bytes such as 1048576, \"512KiB\" or \"64MiB\", got {value!r}")


def dec_hook(type_: type, value: Any) -> Any:
    """msgspec decode hook: turns the written forms into Duration and ByteSize, with a message naming the form."""
    if type_ is Duration:
        return Duration.parse(value)
    if type_ is ByteSize:
        return ByteSize.parse(value)
    raise NotImplementedError(f"no decoder for {type_!r}")


def enc_hook(value: Any) -> Any:
    """msgspec encode hook: writes a Duration back as its text."""
    if isinstance(value, Duration):
        return getattr(value, "text", f"{float(value)}s")
    if isinstance(value, ByteSize):
        return int(value)
    raise NotImplementedError(f"cannot encode {type(value)!r}")
