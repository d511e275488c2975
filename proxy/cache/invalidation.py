"""Invalidation: what a purge by URL removes, and what an unsafe request invalidates (RFC 9111 4.4).

An origin-governed entry carries `url:<target>` (every host, every Vary variant of that URI); a ruled entry lives
under the key the URL computes to, which several targets can share (`key` fields that leave out a path
parameter), and its Vary variants carry `key:<hash>` of that key. Purging these reaches every copy, in every tier
and process.
"""

from __future__ import annotations

from collections.abc import Iterable

from yarl import URL

from proxy.cache.events import Selector
from proxy.cache.tiers import TieredCache
from proxy.config.rules import RuleSet
from proxy.policy.keys import cache_key, key_tag, keyed_query, raw_params, url_tag


async def purge_uri(tiers: TieredCache, rules: RuleSet, uri: URL) -> int:
    """Drop what is stored for one request target: every variant filled by it, and its ruled GET entry."""
    target = uri.raw_path_qs
    selectors = [Selector("tag", url_tag(target))]
    if (found := rules.match_pattern("GET", uri.path)) is not None and found[0].cacheable:
        rule, _, pattern = found
        key = cache_key(rule, raw_params(rule, pattern, uri.raw_path), keyed_query(rule, uri.query), {},
                        pattern=pattern)
        selectors += [Selector("key", key), Selector("tag", key_tag(key))]
    return sum([await tiers.purge(s) for s in selectors])


async def invalidate(tiers: TieredCache, rules: RuleSet, targets: Iterable[str]) -> int:
    """Drop what is stored for each request target an unsafe request made stale (policy.invalidation)."""
    return sum([await purge_uri(tiers, rules, URL(t, encoded=True)) for t in targets])
