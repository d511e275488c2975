"""The benchmark chart: one bar per target, green when met, rasterised by headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from proxy.devtools import chart

ROWS = [("proxy 1w / bare", "1.06x", ">= 1.00x", 1.06), ("wall time", "82 ms", "<= 65 ms", 0.79)]


def test_svg_draws_each_target_in_its_colour() -> None:
    image = chart.svg("2026-11-28", ROWS)
    assert image.count("<rect") == 1 + len(ROWS)  # background, then one bar a row
    assert 'fill="#2e8b57"' in image and 'fill="#c0392b"' in image
    assert "1.06x (&gt;= 1.00x)" in image


def test_png_is_a_real_png(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI: .ci/run installs it")
        pytest.skip("chromium is not installed")
    out = tmp_path / "bench.png"
    assert chart.write_png(chart.svg("t", ROWS), out) == f"chart written to {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
