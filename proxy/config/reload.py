"""Reloading config and rules from the files the process started with: all or nothing, the old ones kept on error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from proxy.config.rules import RuleSet, load_rules
from proxy.config.settings import Config, apply_overrides, load_config
from proxy.config.units import dec_hook, enc_hook
from proxy.errors import ConfigError

# Config that a running process can take on: the rest is bound to sockets, processes or clients made at start.
LIVE: Final = frozenset({"server.access_log", "memory.max_entries", "memory.max_bytes", "memory.max_entry_bytes"})


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """The command-line flags that beat the config file, laid over it again on every reload."""

    upstream: str | None = None
    redis: str | None = None
    redis_mode: str | None = None
    listen: str | None = None
    admin: str | None = None
    workers: int | None = None
    metrics: str | None = None
    access_log: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Sources:
    """Where this process's config and rules came from."""

    config: Path | None = None
    rules: list[Path] = field(default_factory=list)
    overrides: Overrides = field(default_factory=Overrides)
    # SIDECACHE_* as they were at start: a reload reads files again, not a changed environment
    env: dict[str, str] = field(default_factory=dict)


class Reloaded(msgspec.Struct, frozen=True, kw_only=True):
    """What a reload did: the rules now in force, config changes applied, and changes that wait for a restart."""

    reloaded: bool = True
    rules: int
    applied: list[str]
    restart_required: list[str]


def load_sources(sources: Sources) -> tuple[Config, RuleSet]:
    """Both files decoded and checked; every problem of both raised together as one ConfigError."""
    problems: list[str] = []
    config, rules = Config(), RuleSet()
    try:
        o = sources.overrides
        config = apply_overrides(
            load_config(sources.config), upstream=o.upstream, redis=o.redis, redis_mode=o.redis_mode,
            listen=o.listen, admin=o.admin,
            workers=o.workers, metrics=o.metrics, access_log=o.access_log, env=sources.env,
        )
    except ConfigError as exc:
        problems += exc.problems
    try:
        rules = load_rules(sources.rules)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config, rules


def live_config(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config to run with now (old, with the LIVE fields of new), the LIVE changes, and the others."""
    before, after = _flat(old), _flat(new)
    changed = [k for k in after if before.get(k) != after[k]]
    applied = [f"{k}: {before.get(k)!r} -> {after[k]!r}" for k in changed if k in LIVE]
    waiting = [f"{k}: {before.get(k)!r} -> {after[k]!r} needs a restart" for k in changed if k not in LIVE]
    data = msgspec.to_builtins(old, enc_hook=enc_hook)
    for key in changed:
        if key in LIVE:
            section, field = key.split(".")
            data[section][field] = msgspec.to_builtins(getattr(getattr(new, section), field), enc_hook=enc_hook)
    return msgspec.convert(data, type=Config, dec_hook=dec_hook), applied, waiting


def _flat(config: Config) -> dict[str, object]:
    data = msgspec.to_builtins(config, enc_hook=enc_hook)
    return {f"{section}.{field}": value for section, fields in data.items() for field, value in fields.items()}
