"""The sample backend's deterministic data: the roster, per-prop analyses and invented MLB stats, with no HTTP."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

_STARS: Final = {
    "Aaron Judge": "NYY",
    "Mookie Betts": "LAD",
    "Shohei Ohtani": "LAD",
    "Juan Soto": "NYM",
    "Freddie Freeman": "LAD",
    "Mike Trout": "LAA",
}
_TEAMS: Final = (
    "ARI ATL BAL BOS CHC CWS CIN CLE COL DET HOU KC LAA LAD MIA "
    "MIL MIN NYM NYY ATH PHI PIT SD SF SEA STL TB TEX TOR WSH"
).split()
ROSTER: Final[tuple[str, ...]] = (*_STARS, *(f"Player {n:03d}" for n in range(1, 251)))
_BY_ID: Final = {600000 + index: name for index, name in enumerate(ROSTER)}
_IDS: Final = {name.lower(): pid for pid, name in _BY_ID.items()}

DEFAULT_STAT_TYPES: Final = ("hits", "runs", "home_runs")
BENCHMARK_PLAYERS: Final = ("Aaron Judge", "Mookie Betts", "Shohei Ohtani")
_POSITIONS: Final = ("C", "1B", "2B", "3B", "SS", "LF", "CF", "RF", "DH")
_LABELS: Final = ("L5 Games", "L10 Games", "Season Avg", "vs Opponent", "Home/Away", "Recent Form")
_RATES: Final = dict(hits=(0.6, 1.4), runs=(0.3, 0.9), home_runs=(0.05, 0.35), rbi=(0.3, 1.0), walks=(0.2, 0.7))


def player_id(name: str) -> int | None:
    """The roster id, found case-insensitively and ignoring surrounding spaces, as upstream groups names."""
    return _IDS.get(name.lower().strip())


def player_name(pid: int) -> str | None:
    """The roster name for an MLB-style id, or None for an id upstream would not find."""
    return _BY_ID.get(pid)


def player_team(name: str) -> str | None:
    """The roster team, so demo traffic can send the `team` and `matchup` the UI would."""
    pid = player_id(name)
    return None if pid is None else _STARS.get(_BY_ID[pid], _TEAMS[pid % len(_TEAMS)])


class PlayerInfo(msgspec.Struct):
    name: str
    team: str
    position: str
    image_url: str | None = None
    score: float | None = None


class Statistic(msgspec.Struct):
    label: str
    value: float


class Insight(msgspec.Struct):
    type: str
    text: str


class EnrichedProp(msgspec.Struct):
    """The per-prop analysis (backend/models/api_models.py), a Struct so its key order is the same everywhere."""

    player_info: PlayerInfo
    summary: str
    deep_analysis: str
    statistics: list[Statistic]
    insights: list[Insight]
    prop_id: str | None
    stat_type: str | None
    line: float
    recommendation: str = ""  # "Will be filled by ML service", which never happens
    confidence: float = 0.0


class PropFields(msgspec.Struct, frozen=True):
    """The five inputs an analysis depends on; `prop_id` is only echoed, so it is not one of them."""

    player_name: str
    stat_type: str
    line: float
    team: str
    matchup: str


def _seed(*parts: object) -> bytes:
    """Stable pseudo-random bytes: upstream uses per-process `hash()`, but demos and tests want the same text."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()


def _position(name: str) -> str:
    return _POSITIONS[_seed(name.lower())[0] % len(_POSITIONS)]


def analyse_prop(prop_id: str | None, fields: PropFields) -> EnrichedProp:
    """The one builder of an EnrichedProp, so the single GET, the POST and the batch give identical bodies."""
    seed, line, name = _seed(*msgspec.structs.astuple(fields)), fields.line, fields.player_name
    stats = [
        Statistic(label, round(line + (seed[i] - 128) / 256 * max(abs(line), 1), 2)) for i, label in enumerate(_LABELS)
    ]
    season, lean = stats[2].value, "over" if stats[2].value > line else "under"
    insights = [
        Insight("performance_trend", f"{name} is at {stats[5].value} {fields.stat_type} in recent form."),
        Insight("matchup_advantage", f"{fields.team} in {fields.matchup}: {stats[3].value} against this opponent."),
        Insight("statistical_edge", f"Season average {season} against a {line} line: edge {season - line:+.2f}."),
    ]
    if seed[8] % 3 == 0:
        insights.append(Insight("weather_impact", f"Conditions for {fields.matchup} slightly favour hitters."))
    summary = f"{name} {fields.stat_type} line {line}: season average {season}, leaning {lean} in {fields.matchup}."
    deep = "\n".join([summary, *(f"{stat.label}: {stat.value}" for stat in stats)])
    info = PlayerInfo(name, fields.team, _position(name))
    return EnrichedProp(info, summary, deep, stats, insights, prop_id, fields.stat_type, line)


def hitting_stats(pid: int, games: int) -> dict[str, int]:
    """Invented counting stats at per-game rates that are stable for a player."""
    seed = _seed(pid, games)
    rates = {
        key: round(games * (low + seed[i] / 255 * (high - low))) for i, (key, (low, high)) in enumerate(_RATES.items())
    }
    return {"games": games, "at_bats": 4 * games, **rates}


def stat_data(pid: int, kind: str) -> dict[str, Any]:
    """What `statsapi.player_stat_data(pid, type=kind)` returns, with invented numbers."""
    name, seed = _BY_ID[pid], _seed(pid)
    first, _, last = name.partition(" ")
    group = dict(type=kind, group="hitting", season="2025", stats=hitting_stats(pid, 1 if kind == "gameLog" else 120))
    person = dict(id=pid, first_name=first, last_name=last, active=True, current_team=player_team(name))
    bats, throws = ("Right", "Left", "Switch")[seed[2] % 3], ("Right", "Left")[seed[3] % 2]
    debut = f"{2012 + seed[0] % 12}-04-{1 + seed[1] % 28:02d}"
    details = dict(nickname=None, last_played="2025-07-30", mlb_debut=debut, bat_side=bats, pitch_hand=throws)
    return {**person, "position": _position(name), **details, "stats": [group]}
