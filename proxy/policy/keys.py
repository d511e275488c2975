"""Cache keys: which parts of a request decide the response, so equal requests share one entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec
from multidict import MultiMapping

from proxy.config.rules import CompiledRule, field_value

SEP: Final = "\x1f"  # after the rule name, which cannot contain it (rule names are [A-Za-z0-9_.-])


def cache_key(
    rule: CompiledRule,
    params: Mapping[str, str],
    query: MultiMapping[str],
    headers: Mapping[str, str],
) -> str:
    """Rule name, then the rule's `key` fields, or all path params plus the selected query params sorted by name.

    The parts are JSON-encoded, so no value can imitate a separator (`%26`, `%1F`), and a field keeps every value it
    was given: `?player=a&player=b` never shares an entry with `?player=a`, whichever one the origin reads.
    The method is not part of the key: only GET (and HEAD, served from GET) entries are ever stored.
    Repeated query params keep their relative order, since `?a=1&a=2` may mean something else than `?a=2&a=1`.
    """
    if rule.key_fields is not None:
        parts: list[object] = [_values(f.source, f.name, params, query, headers) for f in rule.key_fields]
    else:
        names = sorted(set(query)) if rule.query_names is None else sorted(n for n in rule.query_names if n in query)
        parts = [[params[k] for k in sorted(params)], [[n, *query.getall(n)] for n in names]]
    return rule.name + SEP + _encode(parts).decode()


_encode: Final = msgspec.json.Encoder().encode


def _values(source: str, name: str, params: Mapping[str, str], query: MultiMapping[str],
            headers: Mapping[str, str]) -> list[str]:
    if source == "path":
        return [params[name]] if name in params else []
    src = query if source == "query" else headers
    if isinstance(src, MultiMapping):
        return list(src.getall(name, ()))
    return [src[name]] if name in src else []


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
