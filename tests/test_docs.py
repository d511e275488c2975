"""The README and docs/ cannot rot: every TOML example loads as `sidecache check` would load it, every command
names a subcommand and flags the CLI accepts, every link to a page points at one, and CI runs the README's
test command exactly."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from proxy.cli import parser
from proxy.config.rules import load_rules
from proxy.config.settings import load_config
from tests.support.processes import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
COMMAND = re.compile(r"(?:\.venv/bin/sidecache|\.venv/bin/python -m proxy(?=\s))\s[^\n`]*")


def blocks(kind: str) -> list[tuple[str, str]]:
    """(page:line, text) of every fenced block of one kind."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == kind:
                out.append((f"{page.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(2)))
    return out


TOML = blocks("toml")


def test_the_docs_have_examples_to_check() -> None:
    assert len(TOML) >= 5 and len(commands()) >= 10


@pytest.mark.parametrize(("where", "text"), TOML, ids=[w for w, _ in TOML])
def test_every_toml_example_loads(where: str, text: str, tmp_path: Path) -> None:
    """A block with [[route]] is a rules file, any other a config file; both through check's own loaders."""
    path = tmp_path / "example.toml"
    path.write_text(text)
    if "[[route]]" in text:
        assert load_rules(path).rules, where
    else:
        load_config(path)


def commands() -> list[tuple[str, str]]:
    """Every `.venv/bin/sidecache ...` or `.venv/bin/python -m proxy ...` in a page, up to a shell operator."""
    out = []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in COMMAND.finditer(line):
                out.append((f"{page.relative_to(ROOT)}:{n}", m.group(0)))
    return out


@pytest.mark.parametrize(("where", "command"), commands(), ids=[w for w, _ in commands()])
def test_every_command_is_one_the_cli_accepts(where: str, command: str) -> None:
    words = shlex.split(command.split(" #")[0], posix=True)
    for i, w in enumerate(words):
        if w in ("&&", "||", "|", ";", ">", "<") or w.startswith(("#", ">")):
            words = words[:i]
            break
    args = words[1:] if words[0].endswith("sidecache") else words[3:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            parser().parse_args(args)
        except SystemExit as exc:  # --version and --help exit 0; a bad flag exits 2
            assert exc.code == 0, f"{where}: {command!r}: {out.getvalue()}"


def test_no_command_calls_a_bare_sidecache() -> None:
    """`sidecache` is not on PATH until the venv is activated: every command in a block says .venv/bin/."""
    bare = [(where, line) for kind in ("sh", "") for where, text in blocks(kind) for line in text.splitlines()
            if re.match(r"\s*sidecache\s", line)]
    assert bare == []


def test_links_between_pages_resolve() -> None:
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                missing.append((page.name, target))
    assert missing == []


def test_test_paths_named_in_the_docs_exist() -> None:
    named = [(page.name, m) for page in PAGES for m in re.findall(r"\btests/[\w/]+(?:\.py)?", page.read_text())]
    assert named and [(page, path) for page, path in named if not (ROOT / path).exists()] == []


def test_ci_runs_the_readme_test_command_exactly() -> None:
    readme = [text.strip() for _, text in blocks("sh") if "pytest" in text and "pip install" in text]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert readme and ci == readme[:1]


def test_no_page_points_at_a_design_file_outside_the_repository() -> None:
    assert [p.name for p in PAGES if "DESIGN.md" in p.read_text()] == []


def test_bench_help_and_the_benchmark_page_agree_on_how_long_it_takes() -> None:
    from proxy.cli import BENCH_QUICK_TIME, BENCH_TIME

    page = (ROOT / "docs" / "benchmark.md").read_text()
    assert f"bench           # {BENCH_TIME}" in page and f"bench --quick   # {BENCH_QUICK_TIME}" in page
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser().parse_args(["bench", "--help"])
    shown = " ".join(out.getvalue().split())
    assert BENCH_TIME in shown and BENCH_QUICK_TIME in shown


def test_every_rule_and_config_field_is_documented() -> None:
    """A field added to a Struct without a line in the reference pages fails here."""
    import msgspec

    from proxy.config.rules import Batch, Route
    from proxy.config.settings import Config

    rules = (ROOT / "docs" / "rules.md").read_text()
    missing = [f.name for s in (Route, Batch) for f in msgspec.structs.fields(s) if f"| `{f.name}` |" not in rules]
    pages = {"redis": (ROOT / "docs" / "redis.md").read_text()}
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    for section in msgspec.structs.fields(Config):
        for f in msgspec.structs.fields(section.type):
            page = pages.get(section.name)
            if (f"`{f.name}`" not in page) if page is not None else (f"`{section.name}.{f.name}`" not in configuration):
                missing.append(f"{section.name}.{f.name}")
    assert missing == []
