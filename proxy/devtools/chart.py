"""The benchmark's chart: every target as a bar, measured over target (1.0 = just met), drawn as SVG and
rasterised to PNG by headless Chromium when one is installed (no plotting library to depend on)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html import escape
from pathlib import Path

WIDTH, ROW, LEFT, BAR = 1300, 34, 400, 400


def svg(title: str, rows: list[tuple[str, str, str, float]]) -> str:
    """rows: (name, measured, target, score); a bar reaches the target line at score 1.0 and stops at 2.0."""
    height = 70 + ROW * len(rows)
    one = LEFT + BAR / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="DejaVu Sans, '
           f'sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="16" y="26" font-size="16" font-weight="bold">sidecache bench: measured / target '
           f'({escape(title)})</text>',
           f'<line x1="{one}" y1="40" x2="{one}" y2="{height - 10}" stroke="#333" stroke-dasharray="4 3"/>',
           f'<text x="{one + 4}" y="52" fill="#333">target</text>']
    for i, (name, value, target, score) in enumerate(rows):
        y = 62 + i * ROW
        width = max(2.0, min(score, 2.0) / 2 * BAR)
        colour = "#2e8b57" if score >= 1.0 else "#c0392b"
        out += [f'<text x="16" y="{y + 17}">{escape(name)}</text>',
                f'<rect x="{LEFT}" y="{y + 4}" width="{width:.1f}" height="18" fill="{colour}"/>',
                f'<text x="{LEFT + BAR + 12}" y="{y + 17}">{escape(value)} ({escape(target)})</text>']
    out.append("</svg>")
    return "\n".join(out)


def write_png(image: str, path: Path) -> str:
    """Rasterise with headless Chromium; without one, write the SVG beside it and say so."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        alt = path.with_suffix(".svg")
        alt.write_text(image)
        return f"no chromium installed: chart written as {alt} instead of {path}"
    height = int(image.split('height="', 1)[1].split('"', 1)[0])
    with tempfile.TemporaryDirectory(prefix="sidecache-chart-") as tmp:
        page = Path(tmp) / "chart.svg"
        page.write_text(image)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", "--hide-scrollbars", f"--window-size={WIDTH},{height}",
             f"--screenshot={path.resolve()}", page.as_uri()],
            check=True, capture_output=True, timeout=60,
        )
    return f"chart written to {path}"
