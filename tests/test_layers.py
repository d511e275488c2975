"""Imports point one way, down the packages of proxy/ (README, "How it works"), with no cycle inside a package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import ROOT

PROXY = ROOT / "proxy"

# A module may import from its own package or any package above it (lower index); never from one below.
ORDER = ["errors", "config", "policy", "concurrency", "telemetry", "cache", "serving", "ops", "app", "devtools",
         "cli", "__main__"]
PURE = {"policy"}  # decisions only: no aiohttp, no redis, no asyncio
GENERIC = {"policy", "concurrency"}  # know nothing of HTTP servers or Redis
REDIS_HOME = "proxy.cache.redis"  # the only code that imports redis


def modules(top: Path = PROXY) -> Iterator[tuple[str, Path]]:
    for path in sorted(top.rglob("*.py")):
        rel = path.relative_to(top.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def area(module: str) -> str:
    """`proxy.serving.fill` -> `serving`; the top-level modules are areas of their own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str, path: Path) -> set[str]:
    """Every module this one imports, as absolute names; `if TYPE_CHECKING:` imports count too (a cycle in types
    is still a cycle in the design)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def own(names: set[str], known: set[str]) -> set[str]:
    """The sidecache modules among imported names (`from proxy.x import y` may name a module or a symbol)."""
    return {n for n in names if n in known}


def test_every_area_is_placed() -> None:
    unplaced = {area(m) for m, _ in modules()} - set(ORDER) - {"__init__"}
    assert unplaced == set(), f"add these packages to ORDER in tests/test_layers.py: {sorted(unplaced)}"


def test_imports_point_down_the_packages() -> None:
    known = {m for m, _ in modules()}
    wrong = []
    for me, path in modules():
        if area(me) == "__init__":
            continue
        for imp in own(imports(me, path), known):
            if area(imp) != "__init__" and ORDER.index(area(imp)) > ORDER.index(area(me)):
                wrong.append(f"{me} imports {imp}, which sits below it")
    assert wrong == []


def test_pure_and_generic_packages_import_no_io() -> None:
    wrong = []
    for me, path in modules():
        for imp in imports(me, path):
            top = imp.split(".")[0]
            if area(me) in GENERIC and top in {"aiohttp", "redis"}:
                wrong.append(f"{me} imports {imp}")
            if area(me) in PURE and top == "asyncio":
                wrong.append(f"{me} imports {imp}")
            if top == "redis" and not me.startswith(REDIS_HOME):
                wrong.append(f"{me} imports {imp}: only {REDIS_HOME} may")
    assert wrong == []


def test_no_import_cycles_inside_a_package() -> None:
    known = {m for m, _ in modules()}
    graph = {me: {i for i in own(imports(me, path), known) if i != me and area(i) == area(me)}
             for me, path in modules()}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif len(trail) < 20:
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_test_folders_mirror_the_packages() -> None:
    """tests/<path>/ holds the tests of proxy/<path>/ (tests/support/ holds what they share)."""
    tests = ROOT / "tests"
    folders = {p.parent.relative_to(tests) for p in tests.rglob("test_*.py")} - {Path(".")}
    assert folders and {f for f in folders if not (PROXY / f / "__init__.py").exists()} == set()


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/ and fixtures in conftest.py: a test module is never a library."""
    wrong = [f"{me} imports {imp}" for me, path in modules(ROOT / "tests") for imp in imports(me, path)
             if imp.startswith("tests.") and any(part.startswith("test_") for part in imp.split("."))]
    assert wrong == []
