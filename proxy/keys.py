"""Cache keys: which parts of a request decide the response, so equal requests share one entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multidict import MultiMapping

from .rules import CompiledRule, field_value

SEP: Final = "\x1f"  # unit separator: cannot appear in a decoded path or query value from a real URL


def cache_key(
    rule: CompiledRule,
    params: Mapping[str, str],
    query: MultiMapping[str],
    headers: Mapping[str, str],
) -> str:
    """Rule name, then the rule's `key` fields, or all path params plus the selected query params sorted by name.

    The method is not part of the key: only GET (and HEAD, served from GET) entries are ever stored.
    Repeated query params keep their relative order, since `?a=1&a=2` may mean something else than `?a=2&a=1`.
    """
    if rule.key_fields is not None:
        parts = [rule.name, *(f"{f.source}.{f.name}={field_value(f, params, query, headers)}" for f in rule.key_fields)]
        return SEP.join(parts)
    parts = [rule.name, *(f"{k}={params[k]}" for k in sorted(params))]
    if rule.query_names is None:
        names = sorted(set(query))
    else:
        names = sorted(n for n in rule.query_names if n in query)
    parts.append("?" + "&".join(f"{n}={v}" for n in names for v in query.getall(n)))
    return SEP.join(parts)


def tags_for(rule: CompiledRule, params: Mapping[str, str], query: Mapping[str, str], headers: Mapping[str, str]) -> list[str]:
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
