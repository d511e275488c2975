"""Proxy configuration (config/*.toml): typed, strict, and checked before anything starts."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta
from yarl import URL

from proxy.config.units import ByteSize, Duration, dec_hook, enc_hook
from proxy.errors import ConfigError

_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 5.1)
Port = Annotated[int, Meta(ge=0, le=65535)]
Count = Annotated[int, Meta(ge=1)]
S = TypeVar("S", bound=msgspec.Struct)


def parse_hostport(value: str, *, field: str = "address") -> tuple[str, int]:
    """Split "HOST:PORT" ("[::1]:8080" for IPv6); ValueError names the field."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ValueError(f"`{field}` must be HOST:PORT such as \"127.0.0.1:8080\", got {value!r}")
    return host.strip("[]"), int(port)


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Every config and rules object: unknown fields are errors, values never change after loading."""


class UpstreamConfig(_Strict, frozen=True):
    """Where the backend is and how long to wait for it."""

    url: str = "http://127.0.0.1:8000"
    health_path: str = "/health"
    connect_timeout: Duration = Duration.of("2s")
    read_timeout: Duration = Duration.of("30s")
    # Below the 5 s after which uvicorn and Node close an idle keep-alive connection: a pooled connection is
    # dropped here before the backend can close it under a request in flight.
    keepalive_timeout: Duration = Duration.of("4s")
    max_connections: Count = 256
    # WebSockets and streamed pass-through hold a connection as long as the client does: a pool of their own,
    # so they never take the connections that fills need.
    max_passthrough_connections: Count = 256
    pool_timeout: Duration = Duration.of("2s")  # waiting for a free connection, then 503 with Retry-After
    max_batch_calls: Count = 32  # all batched routes together; each route also has its own `max_calls`
    max_fallback_calls: Count = 20

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "keepalive_timeout", "pool_timeout"):
            if getattr(self, name) <= 0:  # aiohttp reads 0 as "no timeout at all"
                raise ValueError(f"`{name}` must be longer than 0s")
        if not self.health_path.startswith("/"):
            raise ValueError(f"`health_path` must start with /, got {self.health_path!r}")
        u = URL(self.url)
        if u.scheme not in ("http", "https") or not u.host:
            raise ValueError(f"`url` must be an http:// or https:// URL with a host, got {self.url!r}")
        if u.user is not None or u.password is not None:  # would be dropped silently; clients send their own auth
            raise ValueError("`url` must not carry user:password@ (the proxy forwards each client's Authorization)")
        if u.query_string or u.fragment:
            raise ValueError(f"`url` may have a path prefix but no query or fragment, got {self.url!r}")


class MemoryConfig(_Strict, frozen=True):
    """The in-process LRU tier."""

    max_entries: Count = 500
    max_bytes: ByteSize = ByteSize(64 * 1024 * 1024)
    max_entry_bytes: ByteSize = ByteSize(1024 * 1024)


class RedisConfig(_Strict, frozen=True):
    """The shared tier; off when nothing names a Redis (no `url` in single mode, nothing in the others).

    `mode`: "single" (one server at `url`), "cluster" (Redis Cluster: `url` and `nodes` are seeds) or "sentinel"
    (the primary of `service`, found through `sentinels`; `url` gives only its credentials, TLS and database).
    """

    mode: Literal["single", "cluster", "sentinel"] = "single"
    url: str = ""
    nodes: list[str] = []  # cluster: more seed nodes, HOST:PORT
    sentinels: list[str] = []  # sentinel: every sentinel, HOST:PORT
    service: str = ""  # sentinel: the name the sentinels monitor the primary under
    pool_size: Count = 20
    timeout: Duration = Duration.of("50ms")
    prefix: str = "sidecache:v1"
    lease: Duration = Duration.of("5s")
    breaker_failures: Count = 3
    probe_min: Duration = Duration.of("500ms")
    probe_max: Duration = Duration.of("10s")

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.nodes or self.sentinels)

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            # the value is not echoed: a URL may carry a password
            raise ValueError("`url` must start with redis://, rediss:// or unix://")
        parts = urlsplit(self.url) if self.url.startswith("redis") else None
        db = parts.path.strip("/") if parts is not None else ""
        if db and not db.isdigit():  # redis-py would quietly use db 0, where the backend keeps its own keys
            raise ValueError("`url` must end in a database number such as /1, or nothing for db 0")
        if not self.prefix.strip():
            raise ValueError("`prefix` must not be empty: it keeps sidecache's keys apart from the backend's")
        for name in ("timeout", "lease", "probe_min"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be longer than 0s")
        if self.probe_max < self.probe_min:
            raise ValueError("`probe_max` must not be shorter than `probe_min`")
        for name, wanted in (("nodes", "cluster"), ("sentinels", "sentinel"), ("service", "sentinel")):
            if getattr(self, name) and self.mode != wanted:
                raise ValueError(f"`{name}` is for mode = \"{wanted}\", and mode is \"{self.mode}\"")
        for name in ("nodes", "sentinels"):
            for i, node in enumerate(getattr(self, name)):
                parse_hostport(node, field=f"{name}[{i}]")
        if self.mode == "cluster":
            if not (self.url or self.nodes):
                raise ValueError("mode = \"cluster\" needs `url` (any one node) or `nodes` (seed nodes)")
            if self.url.startswith("unix://"):
                raise ValueError("mode = \"cluster\" needs a redis:// or rediss:// `url`: a cluster is reached by TCP")
            if db not in ("", "0"):
                raise ValueError("mode = \"cluster\" has database 0 only: `url` must end in /0 or nothing")
            if "{" in self.prefix or "}" in self.prefix:  # the entries' own hash tags must be the first braces
                raise ValueError("`prefix` must not contain { or } in mode = \"cluster\": sidecache puts its own "
                                 "hash tags in key names")
        if self.mode == "sentinel":
            if not self.sentinels or not self.service:
                raise ValueError("mode = \"sentinel\" needs `sentinels` (HOST:PORT of each) and `service` (the "
                                 "name they monitor the primary under)")
            if self.url.startswith("unix://") or (parts is not None and parts.hostname):
                raise ValueError("in mode = \"sentinel\", `url` names no host (the sentinels find the primary): "
                                 "only credentials, TLS and the database, such as redis://:password@/0")


class DefaultsConfig(_Strict, frozen=True):
    """What happens to requests no rule matches."""

    unruled: Literal["origin", "pass"] = "origin"  # origin: RFC 9111, as the origin's own headers allow
    # RFC 9213: the first of these fields present and valid in an answer replaces its Cache-Control and Expires
    # for this cache (passed on to clients unchanged); [] turns targeted fields off.
    targeted_cache_control: tuple[str, ...] = ("Sidecache-Cache-Control", "CDN-Cache-Control")

    def __post_init__(self) -> None:
        for name in self.targeted_cache_control:
            if not _FIELD_NAME.fullmatch(name) or name.lower() == "cache-control":
                raise ValueError(f"`targeted_cache_control` must list header field names other than Cache-Control, "
                                 f"got {name!r}")


class ListenConfig(_Strict, frozen=True):
    """The two listeners: proxy traffic and the admin API (as Envoy separates them)."""

    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9901"
    workers: Count = 1
    metrics: str = ""  # HOST:PORT of a read-only listener (/metrics, /healthz, /readyz) for Prometheus; "" = none
    access_log: bool = False
    # Peers (CIDRs) whose X-Forwarded-* and Forwarded headers are kept; anyone else's are replaced (first hop).
    trusted_proxies: list[str] = []
    admin_hosts: list[str] = []  # extra `Host` names the admin listener answers for, besides loopback and its IP
    header_timeout: Duration = Duration.of("10s")  # from a request's first byte (or the accept) to its last header
    keepalive_timeout: Duration = Duration.of("75s")  # an idle client connection between requests
    max_connections: Annotated[int, Meta(ge=0)] = 0  # open client connections; 0: from the descriptor limit
    fast_lane: bool = True  # fresh memory hits answered straight from the connection (serving/fast_lane.py)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.admin_hosts):
            if not _is_host(name):
                raise ValueError(f"`admin_hosts[{i}]` must be a host name or IP address without a port, got {name!r}")
        addresses = {"listen": parse_hostport(self.listen, field="listen"),
                     "admin": parse_hostport(self.admin, field="admin")}
        if self.metrics:
            addresses["metrics"] = parse_hostport(self.metrics, field="metrics")
        seen: dict[tuple[str, int], str] = {}
        for name, address in addresses.items():
            if address[1] and (other := seen.get(address)) is not None:
                raise ValueError(f"`{name}` and `{other}` are both {getattr(self, name)}: each listener needs its "
                                 "own port")
            seen[address] = name
        for name in ("header_timeout", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be longer than 0s")
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"`trusted_proxies[{i}]` must be an address or CIDR such as \"10.0.0.0/8\", "
                                 f"got {cidr!r}") from None


class Config(_Strict, frozen=True):
    """The whole proxy config; every section is optional and defaults to a loopback, memory-only proxy."""

    server: ListenConfig = ListenConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    memory: MemoryConfig = MemoryConfig()
    redis: RedisConfig = RedisConfig()
    defaults: DefaultsConfig = DefaultsConfig()


def _is_host(name: str) -> bool:
    """A bare host name or IP address: no port, scheme or path."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name))


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback ranges, where an admin API without a token is safe."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def convert_part(value: object, type_: type[S], at: str) -> S | str:
    """Validate one part of a decoded file (a section, one `[[route]]`) on its own, so a mistake in one part
    never hides the mistakes in the others; a failure comes back as msgspec's message re-rooted at `at`."""
    try:
        return msgspec.convert(value, type=type_, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if " - at `$" in text:
            return text.replace(" - at `$", f" - at `{at}", 1)
        return f"{text} - at `{at}`"


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as plain data; ConfigError names the file (and the TOML parser's line) on failure."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read {what} file: {exc.strerror}"]) from exc
    try:
        decoded: dict[str, Any] = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    return decoded


def load_config(path: Path | None) -> Config:
    """Decode one config file strictly, each section on its own so that every problem is reported in one run;
    None gives the embedded defaults."""
    if path is None:
        return Config()
    data = read_toml(path, "config")
    problems: list[str] = []
    sections: dict[str, msgspec.Struct] = {}
    fields = {f.name: f.type for f in msgspec.structs.fields(Config)}
    for name, value in data.items():
        type_ = fields.get(name)
        if type_ is None:
            problems.append(f"{path}: Object contains unknown field `{name}`")
            continue
        part = convert_part(value, type_, f"$.{name}")
        if isinstance(part, str):
            problems.append(f"{path}: {part}")
        else:
            sections[name] = part
    if problems:
        raise ConfigError(problems)
    return Config(**sections)  # type: ignore[arg-type]


def apply_overrides(
    config: Config,
    *,
    upstream: str | None = None,
    redis: str | None = None,
    redis_mode: str | None = None,
    listen: str | None = None,
    admin: str | None = None,
    workers: int | None = None,
    metrics: str | None = None,
    access_log: bool | None = None,
    env: dict[str, str] | None = None,
) -> Config:
    """Layer env variables, then command-line flags, over the file (flags win), re-validating the result."""
    env = dict(os.environ) if env is None else env
    upstream = upstream or env.get("SIDECACHE_UPSTREAM") or None
    redis = redis if redis is not None else env.get("SIDECACHE_REDIS_URL")
    redis_mode = redis_mode or env.get("SIDECACHE_REDIS_MODE") or None
    data = msgspec.to_builtins(config, enc_hook=enc_hook)
    flags = {"listen": listen, "admin": admin, "workers": workers, "metrics": metrics, "access_log": access_log}
    data["server"].update({k: v for k, v in flags.items() if v is not None})
    if upstream:
        data["upstream"]["url"] = upstream
    if redis is not None:
        data["redis"]["url"] = redis
    if redis_mode is not None:
        data["redis"]["mode"] = redis_mode
    try:
        return msgspec.convert(data, type=Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"command line or environment: {exc}"]) from exc


def check_workers(config: Config) -> list[str]:
    """`--workers N` shares one cache through Redis only: without it, a purge or the invalidation after a POST
    would reach the one worker that saw it, and the others would go on serving the old answer."""
    if config.server.workers > 1 and not config.redis.enabled:
        return [f"server.workers: {config.server.workers} workers need a shared Redis ([redis] url or "
                "SIDECACHE_REDIS_URL): each would keep its own cache and miss the others' purges; "
                "set a Redis or run one worker"]
    return []


def check_admin_exposure(config: Config, token: str | None) -> list[str]:
    """An admin API reachable from outside the host must have a token: purge and warm are mutating."""
    host, _ = parse_hostport(config.server.admin)
    if not token and not is_loopback(host):
        return [
            f"server.admin: the admin listener binds {config.server.admin}, which is not loopback, and "
            "SIDECACHE_ADMIN_TOKEN is not set; set a token or bind 127.0.0.1"
        ]
    return []
