"""The benchmark's reference workloads: a Zipf trace over the per-player routes and a prop screen's burst."""

from __future__ import annotations

import random
from urllib.parse import quote, urlencode

from proxy.devtools.sample_data import ROSTER, player_id, player_team


def zipf_trace(n: int = 5000, players: int = 200, s: float = 1.1, seed: int = 7) -> list[str]:
    """The reference trace: Zipf(s) player popularity over the four per-player data routes."""
    rng = random.Random(seed)
    names = list(ROSTER[:players])
    weights = [1 / (k**s) for k in range(1, players + 1)]
    out = []
    for name in rng.choices(names, weights, k=n):
        pid = player_id(name)
        out.append(rng.choice((
            f"/api/v1/optimized/player-data/{quote(name)}?stat_types=hits",
            f"/api/v1/players/{quote(name)}/id",
            f"/api/v1/players/{pid}/game-logs",
            f"/api/v1/players/{pid}/season-stats?stat_type={rng.choice(('hits', 'runs'))}",
        )))
    return out


def prop_burst(n: int = 1000, players: int = 25, seed: int = 11) -> list[str]:
    """Per-prop analysis requests, as a prop screen fires them, over `players` players."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = ROSTER[i % players]
        team = player_team(name) or "NYY"
        q = urlencode({"player_name": name, "stat_type": rng.choice(("hits", "runs", "rbi", "home_runs")),
                       "line": rng.choice((0.5, 1.5, 2.5)), "team": team, "matchup": f"{team} vs BOS"})
        out.append(f"/mlb/enhanced-prop-analysis/prop-{i}?{q}")
    return out
