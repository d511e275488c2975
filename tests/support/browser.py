"""Headless Chromium (Debian's `chromium` package) for tests that look at a page as a person would."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)


def need_chromium() -> str:
    """The browser; a laptop without it skips, CI must have it (`.ci/run` installs it), so there it fails."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI=true: install it (`.ci/run` does)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


async def chromium(profile: Path, *args: str, timeout: float = 60.0) -> bytes:
    """Run the browser to completion without blocking the event loop (the servers under test live on it)."""
    proc = await asyncio.create_subprocess_exec(
        need_chromium(), *FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the renderer children go with it
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


class Page(HTMLParser):
    """The text of every element carrying `data-stat`, keyed by its enclosing `data-route`/`data-tier` (or "")."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stats: dict[str, dict[str, str]] = {}
        self.body: dict[str, str] = {}
        # One entry per open element: tag, the scope it is in, and the text parts when it carries data-stat.
        self._stack: list[tuple[str, str, str | None, list[str] | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if tag in VOID:
            return
        scope = a.get("data-route") or a.get("data-tier") or (self._stack[-1][1] if self._stack else "")
        stat = a.get("data-stat")
        self._stack.append((tag, scope, stat, [] if stat else None))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, scope, stat, parts = self._stack.pop()
            if stat is not None and parts is not None:
                self.stats.setdefault(scope, {})[stat] = "".join(parts).strip()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, _, _, parts in self._stack:
            if parts is not None:
                parts.append(data)
