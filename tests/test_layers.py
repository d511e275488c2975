"""Imports point one way, down the layers of STYLE.md; only the web layer imports aiohttp.web."""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parent.parent / "proxy"

# A module may import from its own layer or any layer above it (lower index).
LAYERS = [
    {"errors", "units"},
    {"config", "rules"},
    {"keys", "freshness", "entry", "headers", "insights", "events", "validators", "origin"},
    {"memory_tier", "redis_tier", "breaker", "upstream", "metrics", "access_log", "snapshots"},
    {"tiers", "coalescer", "batcher", "lease", "stats", "reload", "workers"},
    {"handler", "fill", "forward", "answer", "unruled", "batch_route", "batch_merge", "warm"},
    {"app", "admin"},
    {"cli", "__main__", "demo", "bench", "chart", "loadgen", "sample_backend", "sample_data", "__init__"},
]
WEB = {"handler", "fill", "forward", "answer", "unruled", "app", "admin", "demo", "bench", "sample_backend"}
GENERIC = {"coalescer", "batcher"}  # know nothing of HTTP or Redis


def layer(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"proxy/{name}.py is in no layer of tests/test_layers.py: place it")


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module:
                out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(PROXY.glob("*.py")):
        me = path.stem
        for imp in imports(path):
            if imp == "aiohttp.web" or imp.startswith("aiohttp.web"):
                if me not in WEB:
                    wrong.append(f"{me} imports aiohttp.web")
            elif me in GENERIC and imp.split(".")[0] in {"aiohttp", "redis"}:
                wrong.append(f"{me} is generic but imports {imp}")
            elif (PROXY / f"{imp}.py").exists() and imp != "__init__" and layer(imp) > layer(me):
                wrong.append(f"{me} (layer {layer(me)}) imports {imp} (layer {layer(imp)})")
    assert wrong == []
