"""Cache keys, every format in one place: ruled entries, origin-governed entries, Vary variants, batch failures.

A key identifies the resource: which rule and which of its patterns matched, the path parameters as the upstream
receives them (percent-encoded, so `/f/a%2Fb` and `/f/a/b` never share), then the rule's key fields or the query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec
from multidict import MultiDict, MultiMapping

from proxy.config.rules import CompiledRule, field_value

SEP: Final = "\x1f"  # after the rule name, which cannot contain it (rule names are [A-Za-z0-9_.-])
VARIANT: Final = "\x1e"  # before each Vary'd request header of a variant's key
FAILED: Final = "\x1dfailed"  # after an item's key: what the batch endpoint said of that item
ORIGIN: Final = "~"  # the "rule name" of entries no rule governs (RFC 9111 keys on the URI)
RAW_PATH: Final = "~path"  # the parameter that stands for the whole raw path when a pattern cannot split it

_encode: Final = msgspec.json.Encoder().encode


def raw_params(rule: CompiledRule, pattern: int, raw_path: str) -> dict[str, str]:
    """The path parameters as sent (percent-encoded), which is what the upstream receives; the whole path when the
    pattern's literal parts are encoded differently than a browser would write them."""
    path = raw_path.partition("?")[0]
    rx = rule.raw_regexes[pattern] if pattern < len(rule.raw_regexes) else None
    m = rx.fullmatch(path) if rx is not None else None
    return m.groupdict() if m is not None else {RAW_PATH: path}


def cache_key(
    rule: CompiledRule,
    params: Mapping[str, str],
    query: MultiMapping[str],
    headers: Mapping[str, str],
    *,
    pattern: int = 0,
) -> str:
    """Rule name and pattern, then the rule's `key` fields, or all path params plus the selected query params.

    `params` are the path parameters as sent (see raw_params). The parts are JSON-encoded, so no value can imitate a
    separator (`%26`, `%1F`), and a field keeps every value it was given: `?player=a&player=b` never shares an entry
    with `?player=a`, whichever one the origin reads. Repeated query params keep their relative order, since
    `?a=1&a=2` may mean something else than `?a=2&a=1`. The method is not part of the key: only GET (and HEAD,
    served from GET) entries are ever stored.
    """
    if rule.key_fields is not None:
        parts: list[object] = [f.values(params, query, headers) for f in rule.key_fields]
        if RAW_PATH in params:
            parts.append(params[RAW_PATH])
    else:
        names = sorted(set(query)) if rule.query_names is None else sorted(n for n in rule.query_names if n in query)
        parts = [[params[k] for k in sorted(params)], [[n, *query.getall(n)] for n in names]]
    return f"{rule.name}{SEP}{pattern}{SEP}{_encode(parts).decode()}"


def origin_key(raw_path_qs: str, host: str) -> str:
    """The target URI as sent, byte for byte, with its authority (RFC 9111 2): the Host the client named reaches the
    upstream as X-Forwarded-Host, so answers built from it are kept apart."""
    return f"{ORIGIN}{SEP}{host.lower()}{SEP}{raw_path_qs}"


def variant_key(key: str, vary: Iterable[str], request: Mapping[str, str]) -> str:
    """The key of one Vary variant: each named request header, whitespace-normalised (RFC 9111 4.1)."""
    return key + "".join(f"{VARIANT}{name}={' '.join(request.get(name, '').split())}" for name in vary)


def failure_key(item_key: str) -> str:
    """Where a batch endpoint's `failed` answer for an item is remembered (never read by single requests)."""
    return item_key + FAILED


def url_tag(raw_path_qs: str) -> str:
    """Every entry filled by a request for this URI (all hosts, all Vary variants) carries this tag, so a purge by
    URL or an unsafe request drops them all."""
    return f"url:{raw_path_qs}"


def key_tag(key: str) -> str:
    """Every entry stored under a resource's key (all its variants) carries this tag."""
    return "key:" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def tags_for(
    rule: CompiledRule, params: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]
) -> list[str]:
    """Expand the rule's tag templates, e.g. `player:{query.player_name}` -> `player:Aaron Judge`."""
    out = []
    for template, fields in rule.tags:
        tag = template
        for f in fields:
            ref = f"{f.source}.{f.name}"
            value = field_value(f, params, query, headers)
            tag = tag.replace("{" + ref + "}", value).replace("{" + f.name + "}", value)
        out.append(tag)
    return out


def keyed_query(rule: CompiledRule, query: MultiMapping[str]) -> MultiMapping[str]:
    """The query a key is built from: without the rule's `refresh_when` switches, which never pick an entry."""
    if not rule.refresh_when:
        return query
    drop = {f.name for f, _ in rule.refresh_when}
    return MultiDict((k, v) for k, v in query.items() if k not in drop)
