"""Route rules (rules/*.toml): what to cache, for how long, keyed on what; loaded strictly, compiled once."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote

import msgspec
from msgspec import Meta

from proxy.config.settings import _Strict, convert_part, read_toml
from proxy.config.units import Duration
from proxy.errors import ConfigError

RouteName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
CACHEABLE_METHODS: Final = frozenset({"GET", "HEAD"})
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})
_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")
_FIELD: Final = re.compile(r"^(?:(path|query|header)\.)?([A-Za-z0-9_-]+)$")
_TEMPLATE_REF: Final = re.compile(r"\{([^{}]*)\}")
ZERO: Final = Duration.of("0s")


class Batch(_Strict, frozen=True):
    """Fold single-item misses into one call to a batch endpoint (see README, "Batching")."""

    to: str
    group_by: str
    item: dict[str, str]
    body: dict[str, Any]
    window: Duration = Duration.of("200ms")
    idle: Duration = Duration.of("0s")  # "0s": off; else also send once no item has joined for this long
    # "0s": off; else send as soon as the burst stopped: no new item for this long (and a few loop turns), and
    # send a lone item on its own to the single endpoint.
    linger: Duration = Duration.of("0.25ms")
    max_items: Annotated[int, Meta(ge=1, le=1000)] = 50
    max_calls: Annotated[int, Meta(ge=1, le=10000)] = 16  # this route's batch calls in flight at once
    trip_after: Annotated[int, Meta(ge=0)] = 3  # bad batch calls in a row that stop batching; 0: never
    cool_down: Duration = Duration.of("30s")  # batching stays off this long, then a probe; doubles while it fails
    max_cool_down: Duration = Duration.of("10m")
    results: str = "successful"
    failures: str = "failed"
    match_on: str = "prop_id"
    on_item_error: Literal["fallback", "fail"] = "fallback"

    def __post_init__(self) -> None:
        method, _, path = self.to.strip().partition(" ")
        if method not in _METHODS - {"*"} or not path.strip().startswith("/") or "{" in path:
            raise ValueError(f"`to` must be \"METHOD /path\" without parameters, got {self.to!r}")
        for name, ref in self.item.items():
            field, _, kind = ref.partition(":")
            Field.parse(field)
            if kind not in ("", "str", "int", "float", "bool"):
                raise ValueError(f"`item.{name}`: type {kind!r} is not one of str, int, float, bool")
        Field.parse(self.group_by)
        if self.match_on not in self.item:
            raise ValueError(f"`match_on` names {self.match_on!r}, which is not a field of `item`")
        if _count_items(self.body) != 1:
            raise ValueError('`body` must hold the placeholder "$items" exactly once')
        if self.trip_after and not 0 < self.cool_down <= self.max_cool_down:
            raise ValueError(f"`cool_down` must be above 0s and at most `max_cool_down` ({self.max_cool_down.text}),"
                             f" got {self.cool_down.text}")


def _count_items(value: Any) -> int:
    """How often the `$items` placeholder occurs in a batch body template."""
    if isinstance(value, dict):
        return sum(_count_items(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_items(v) for v in value)
    return int(value == "$items")


class Route(_Strict, frozen=True):
    """One rule as written in a rules file."""

    name: RouteName
    match: str | Annotated[list[str], Meta(min_length=1)]
    ttl: Duration
    stale_while_revalidate: Duration = ZERO
    stale_if_error: Duration = ZERO
    query: Literal["all", "none"] | list[str] = "all"
    key: list[str] | None = None
    echo: list[str] = []
    tags: list[str] = []
    share: Literal["per-user", "all-users"] = "per-user"
    uncacheable_bodies: list[str] = []
    cache_status: list[Annotated[int, Meta(ge=200, le=499)]] = msgspec.field(default_factory=lambda: [200])
    negative_ttl: Duration = Duration.of("30s")  # for stored statuses other than 200 (capped at `ttl`)
    client_no_cache: Literal["ignore", "revalidate"] = "ignore"
    # Query switches such as ["query.force_refresh=true"]: the parameter is never part of the key, and a request
    # where it has that value goes upstream and refreshes the entry (the backend's own "past your cache" switch).
    refresh_when: list[str] = []
    # Origin statuses a stale copy answers for within `stale_if_error` (RFC 5861 4; nginx's proxy_cache_use_stale).
    stale_on_status: list[Annotated[int, Meta(ge=500, le=599)]] = msgspec.field(
        default_factory=lambda: [500, 502, 503, 504])
    batch: Batch | None = None

    @property
    def patterns(self) -> list[str]:
        return [self.match] if isinstance(self.match, str) else list(self.match)


class RulesFile(_Strict, frozen=True):
    """A rules file: a list of `[[route]]` tables."""

    route: list[Route] = []


@dataclass(frozen=True, slots=True)
class Field:
    """A reference to part of a request: `path.prop_id`, `query.line`, `header.accept-language`."""

    source: Literal["path", "query", "header"]
    name: str

    @classmethod
    def parse(cls, ref: str) -> Field:
        m = _FIELD.match(ref)
        if not m:
            raise ValueError(f"{ref!r} is not a field reference like `path.NAME`, `query.NAME` or `header.NAME`")
        return cls(m.group(1) or "path", m.group(2))  # type: ignore[arg-type]

    def values(self, params: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]) -> list[str]:
        """Every value this field has in one request, in the order sent: the one way a field is read (keys take
        them all, batch items want exactly one, tags and echo join them)."""
        if self.source == "path":
            return [params[self.name]] if self.name in params else []
        src = query if self.source == "query" else headers
        # a multidict (every value, in order): found by its method, as an ABC isinstance check costs more than the
        # lookup itself, and runs for each key field and tag of every miss
        getall = getattr(src, "getall", None)
        if getall is not None:
            return list(getall(self.name, ()))
        return [src[self.name]] if self.name in src else []


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A Route with its patterns, key fields and tag templates compiled, built once at load time."""

    route: Route
    source: str
    methods: frozenset[str]
    regexes: tuple[re.Pattern[str], ...]
    key_fields: tuple[Field, ...] | None
    query_names: frozenset[str] | None  # None: all params; empty: none
    echo: tuple[Field, ...]
    tags: tuple[tuple[str, tuple[Field, ...]], ...]
    raw_regexes: tuple[re.Pattern[str], ...] = ()  # the patterns against the path as sent (percent-encoded)
    refresh_when: tuple[tuple[Field, str], ...] = ()  # field = value pairs that force a refresh of the plain key

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def cacheable(self) -> bool:
        return self.route.ttl > 0

    @property
    def keyed_on_headers(self) -> bool:
        """A key that reads headers cannot be remembered per request target."""
        return self.key_fields is not None and any(f.source == "header" for f in self.key_fields)


class RuleSet:
    """The compiled rules, in load order; the first rule whose method and pattern match wins."""

    def __init__(self, rules: Iterable[CompiledRule] = (), *, files: Iterable[Path] = (),
                 warnings: Iterable[str] = ()) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.files: tuple[Path, ...] = tuple(files)  # what was loaded, in match order
        self.warnings: tuple[str, ...] = tuple(warnings)  # rules that load but cannot do what they say
        self.by_name: dict[str, CompiledRule] = {r.name: r for r in self.rules}

    def match(self, method: str, path: str) -> tuple[CompiledRule, dict[str, str]] | None:
        """HEAD matches GET rules too: it is served from, and fills, the GET entry (as nginx does)."""
        found = self.match_pattern(method, path)
        return None if found is None else (found[0], found[1])

    def match_pattern(self, method: str, path: str) -> tuple[CompiledRule, dict[str, str], int] | None:
        """The rule, its parameters and which of its `match` patterns matched (part of every key)."""
        for rule in self.rules:
            if method in rule.methods or "*" in rule.methods or (method == "HEAD" and "GET" in rule.methods):
                for i, rx in enumerate(rule.regexes):
                    m = rx.fullmatch(path)
                    if m is not None:
                        return rule, m.groupdict(), i
        return None


def compile_pattern(pattern: str) -> tuple[frozenset[str], re.Pattern[str], frozenset[str]]:
    """"GET /players/{name}/id" -> (methods, regex, parameter names); `{rest...}` spans segments."""
    method, _, path = pattern.strip().partition(" ")
    path = path.strip()
    methods = frozenset(m.strip().upper() for m in method.split("|"))
    if not path.startswith("/") or not methods <= _METHODS:
        raise ValueError(
            f"{pattern!r} must be \"METHOD /path\" with METHOD one of GET, HEAD, POST, PUT, PATCH, DELETE, "
            "OPTIONS or * (several joined by |) and a path starting with /"
        )
    out, names, pos = [], [], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[pos:m.start()]))
        names.append(m.group(1))
        out.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    rest = path[pos:]
    if "*" in path:
        raise ValueError(
            f"{pattern!r}: `*` is not a wildcard in a path (it would match a literal *); write {{rest...}} for "
            "the rest of the path or {name} for one segment"
        )
    if "{" in rest or "}" in rest or len(set(names)) != len(names):
        raise ValueError(f"{pattern!r}: parameters are written {{name}} or {{name...}}, each name once")
    out.append(re.escape(rest))
    return methods, re.compile("".join(out)), frozenset(names)


def raw_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern's path matched against the path as sent: literal parts percent-encoded as a browser would."""
    path = pattern.strip().partition(" ")[2].strip()
    out, pos = [], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(quote(path[pos:m.start()], safe="/:@!$&'()*+,;=-._~")))
        out.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(quote(path[pos:], safe="/:@!$&'()*+,;=-._~")))
    return re.compile("".join(out))


def _compile(route: Route, source: str, problems: list[str], where: Callable[[str], str]) -> CompiledRule | None:
    methods: set[str] = set()
    regexes, param_sets = [], []
    for i, pattern in enumerate(route.patterns):
        try:
            ms, rx, names = compile_pattern(pattern)
        except ValueError as exc:
            problems.append(f"{where('match' if isinstance(route.match, str) else f'match[{i}]')}: {exc}")
            continue
        methods |= ms
        regexes.append(rx)
        param_sets.append(names)
    if not regexes:
        return None
    params = frozenset.intersection(*param_sets)

    def fields(refs: Iterable[str], what: str) -> tuple[Field, ...]:
        out = []
        for ref in refs:
            try:
                f = Field.parse(ref)
            except ValueError as exc:
                problems.append(f"{where(what)}: {exc}")
                continue
            if f.source == "path" and f.name not in params:
                problems.append(
                    f"{where(what)}: `{ref}` names a path parameter that not every `match` pattern has "
                    f"(they have: {', '.join(sorted(params)) or 'none'})"
                )
            out.append(f)
        return tuple(out)

    if route.ttl > 0 and not methods <= CACHEABLE_METHODS:
        problems.append(
            f"{where('ttl')}: only GET and HEAD responses are cached, but `match` allows "
            f"{', '.join(sorted(methods - CACHEABLE_METHODS))}; use ttl = \"0s\" for a pass-through rule"
        )
    tags = tuple((t, fields(_TEMPLATE_REF.findall(t), "tags")) for t in route.tags)
    key_fields = None if route.key is None else fields(route.key, "key")
    echo = fields(route.echo, "echo")
    if route.batch is not None:  # path references must exist in every pattern; shapes are checked by Batch
        fields([route.batch.group_by, *(ref.partition(":")[0] for ref in route.batch.item.values())], "batch")
    query_names = None if route.query == "all" else frozenset() if route.query == "none" else frozenset(route.query)
    refresh: list[tuple[Field, str]] = []
    for i, cond in enumerate(route.refresh_when):
        ref, eq, value = cond.partition("=")
        try:
            f = Field.parse(ref.strip())
            if not eq or f.source != "query":
                raise ValueError(f"{cond!r} must be `query.NAME=VALUE`, like \"query.force_refresh=true\"")
        except ValueError as exc:
            problems.append(f"{where(f'refresh_when[{i}]')}: {exc}")
            continue
        refresh.append((f, value.strip()))
    raws = tuple(raw_pattern(p) for p in route.patterns)
    return CompiledRule(route, source, frozenset(methods), tuple(regexes), key_fields, query_names, echo, tags,
                        raws, tuple(refresh))


def _locator(file: Path, index: int, name: str) -> Callable[[str], str]:
    """Problem prefixes in the shape msgspec uses: file, then the field path."""
    return lambda field: f"{file}: rule {name!r} at `$.route[{index}].{field}`"


def rule_files(path: Path) -> list[Path]:
    """One file, or every *.toml in a folder in name order (that order is the match order)."""
    return sorted(path.glob("*.toml")) if path.is_dir() else [path]


def load_rules(paths: Path | Iterable[Path] | None) -> RuleSet:
    """Phase 1 decodes each file, and each `[[route]]` in it on its own; phase 2 compiles and checks across
    files; every problem raises at once. Rules that can never be reached come back as warnings."""
    if paths is None:
        return RuleSet()
    given = [paths] if isinstance(paths, Path) else list(paths)
    files = [f for p in given for f in rule_files(p)]
    problems: list[str] = []
    decoded: list[tuple[Path, int, Route]] = []
    for f in files:
        try:
            data = read_toml(f, "rules")
        except ConfigError as exc:
            problems += exc.problems
            continue
        problems += [f"{f}: {p}" for p in _decode_file(data, f, decoded)]
    compiled: list[CompiledRule] = []
    seen: dict[str, str] = {}
    seen_patterns: dict[str, str] = {}
    for f, i, route in decoded:
        where = _locator(f, i, route.name)
        if route.name in seen:
            problems.append(f"{where('name')}: duplicate rule name, first defined in {seen[route.name]}")
        seen.setdefault(route.name, str(f))
        for pattern in route.patterns:
            norm = " ".join(pattern.split())
            if norm in seen_patterns:
                problems.append(f"{where('match')}: {pattern!r} is already matched by rule {seen_patterns[norm]}")
            seen_patterns.setdefault(norm, repr(route.name))
        rule = _compile(route, str(f), problems, where)
        if rule is not None:
            compiled.append(rule)
    for p in given:
        if p.is_dir() and not rule_files(p):
            problems.append(f"{p}: no rules files (*.toml) found")
    if files and not problems and not compiled:
        problems.append(f"{', '.join(map(str, files))}: 0 rules; a rules file needs at least one [[route]] table")
    if problems:
        raise ConfigError(["invalid rules:", *("  " + p for p in problems)])
    return RuleSet(compiled, files=files, warnings=shadowed(compiled, decoded))


def _decode_file(data: dict[str, Any], file: Path, into: list[tuple[Path, int, Route]]) -> list[str]:
    """Each `[[route]]` decoded on its own, so one broken rule does not hide the problems of the next."""
    routes = data.get("route", [])
    rest = convert_part({k: v for k, v in data.items() if k != "route"}, RulesFile, "$")
    problems = [rest.removesuffix(" - at `$`")] if isinstance(rest, str) else []
    if not isinstance(routes, list):
        return [*problems, f"Expected `array`, got `{type(routes).__name__}` - at `$.route`"]
    for i, value in enumerate(routes):
        route = convert_part(value, Route, f"$.route[{i}]")
        if isinstance(route, str):
            problems.append(route)
        else:
            into.append((file, i, route))
    return problems


def shadowed(rules: list[CompiledRule], decoded: list[tuple[Path, int, Route]]) -> tuple[str, ...]:
    """A pattern that an earlier rule matches in full can never be reached (the first match wins)."""
    where = {id(route): _locator(f, i, route.name) for f, i, route in decoded}
    out: list[str] = []
    for n, rule in enumerate(rules):
        for j, pattern in enumerate(rule.route.patterns):
            for earlier in rules[:n]:
                if (by := _covering(earlier, pattern)) is not None:
                    field = "match" if isinstance(rule.route.match, str) else f"match[{j}]"
                    out.append(f"{where[id(rule.route)](field)}: {pattern!r} is never reached: rule "
                               f"{earlier.name!r} ({by!r}, in {earlier.source}) comes first and matches every "
                               "request it does; move this rule above it or narrow that pattern")
                    break
    return tuple(out)


def _covering(earlier: CompiledRule, pattern: str) -> str | None:
    """The earlier rule's pattern that matches every request `pattern` matches, if one does.

    Each parameter of `pattern` is replaced by a byte no literal path holds (a `{rest...}` by one and by two
    segments of it); the earlier regex must match every such sample, with every method `pattern` allows."""
    methods, rx, _ = compile_pattern(pattern)
    theirs = set(earlier.methods) | ({"HEAD"} if "GET" in earlier.methods else set())
    if "*" not in theirs and ("*" in methods or not methods <= theirs):
        return None
    path = pattern.strip().partition(" ")[2].strip()
    samples = [""]
    pos = 0
    for m in _PARAM.finditer(path):
        lit = path[pos:m.start()]
        options = ["\0", "\0/\0"] if m.group(2) else ["\0"]
        samples = [s + lit + o for s in samples for o in options]
        pos = m.end()
    samples = [s + path[pos:] for s in samples]
    for written, theirs_rx in zip(earlier.route.patterns, earlier.regexes, strict=True):
        if all(theirs_rx.fullmatch(s) for s in samples) and " ".join(written.split()) != " ".join(pattern.split()):
            return written
    return None


def field_value(f: Field, params: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """The text a field stands for in a tag or an echo: its values joined by commas ("" when absent)."""
    return ",".join(f.values(params, query, headers))
