"""The folder `--workers N` processes share (made by the supervisor): metric snapshots and reload requests.

Each worker other than 0 writes `worker-<i>.msgpack` every second and when it stops; worker 0, which serves
the admin listener, reads them to answer `/metrics` and `/stats` for all. `POST /rules/reload` on worker 0 bumps
`reload`, and every other worker reloads its own files when it sees the number change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from proxy.telemetry import snapshots
from proxy.telemetry.snapshots import Snapshot

TICK: Final = 1.0  # seconds between snapshots; a scrape shows the other workers as of at most this long ago


class WorkerDir:
    """One worker's view of the shared folder."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        self._reload_seen = self.reload_generation()

    def write(self, snapshot: Snapshot) -> None:
        """Atomically (write, then rename), so a reader never sees half a file."""
        final = self.path / f"worker-{self.index}.msgpack"
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(snapshots.encode(snapshot))
        os.replace(tmp, final)

    def others(self) -> list[Snapshot]:
        """The other workers' latest snapshots (a file that cannot be read or decoded is left out)."""
        out = []
        for f in sorted(self.path.glob("worker-*.msgpack")):
            if f.name == f"worker-{self.index}.msgpack":
                continue
            try:
                snap = snapshots.decode(f.read_bytes())
            except OSError:
                continue
            if snap is not None:
                out.append(snap)
        return out

    def reload_generation(self) -> int:
        try:
            return int((self.path / "reload").read_text() or 0)
        except (OSError, ValueError):
            return 0

    def announce_reload(self) -> None:
        """Ask every other worker to reload its files."""
        gen = self.reload_generation() + 1
        tmp = self.path / f"reload.tmp{os.getpid()}"
        tmp.write_text(str(gen))
        os.replace(tmp, self.path / "reload")
        self._reload_seen = gen

    def reload_requested(self) -> bool:
        """True once for each reload announced since the last call."""
        gen = self.reload_generation()
        if gen == self._reload_seen:
            return False
        self._reload_seen = gen
        return True
