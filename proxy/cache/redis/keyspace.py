"""Where sidecache's data lives in Redis: the names of entries, leases, tag and route indexes, and the channel."""

from __future__ import annotations

import hashlib


def entry_hash(key: str) -> str:
    """Redis key suffix for a cache key: fixed length, and no user text in key names."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Keyspace:
    """Every name under one prefix (`sidecache:v1` by default), so nothing of the backend's is ever touched."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channel = f"{prefix}:events"

    def entry(self, h: str) -> str:
        return f"{self.prefix}:entry:{h}"

    def lease(self, h: str) -> str:
        return f"{self.prefix}:lease:{h}"

    def tag(self, tag: str) -> str:
        return f"{self.prefix}:tag:{tag}"

    def route(self, route: str) -> str:
        return f"{self.prefix}:route:{route}"

    def entry_prefix(self) -> str:
        """What an entry's name is before its hash (the purge scripts build names from the hashes in an index)."""
        return f"{self.prefix}:entry:"
