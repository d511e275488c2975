"""Where sidecache's data lives in Redis: the names of entries, leases, tag and route indexes, and the channel.

On one server (single or sentinel) the names are `<prefix>:entry:<hash>`, `<prefix>:lease:<hash>`,
`<prefix>:tag:<tag>` and `<prefix>:route:<route>`. A Redis Cluster runs a script or a multi-key command only when
every key it names is in one slot, and the write script names an entry, its lease and its tag and route indexes
together. So in a cluster every entry falls in one of `BUCKETS` buckets (by its hash), each bucket is one hash tag
(`<prefix>:entry:{<bucket>}:<hash>`), and the indexes are kept per bucket (`<prefix>:tag:{<bucket>}:<tag>`): an
entry, its lease and the index sets that name it share a slot. A purge by tag or route then runs the purge script
once per bucket, so it reaches every shard whatever the slots they own (and after a resharding). The bucket tags
are chosen so the buckets spread evenly over the 16384 slots (one in each 256), so they split over the shards in
proportion to the slots each owns. The events channel is plain PUBLISH, which a cluster broadcasts to every node.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Final

SLOTS: Final = 16384
BUCKETS: Final = 64  # purges run one script per bucket; a shard gets about BUCKETS * (its share of slots)


def entry_hash(key: str) -> str:
    """Redis key suffix for a cache key: fixed length, and no user text in key names."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_slot(tag: str) -> int:
    """The cluster slot of a hash tag (CRC16/XMODEM modulo 16384, as Redis computes it)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


def bucket_tags(n: int = BUCKETS) -> list[str]:
    """n hash tags, the i-th one's slot inside the i-th n-th of the slot range (the first such `b<j>`)."""
    width, found, j = SLOTS // n, dict[int, str](), 0
    while len(found) < n:
        found.setdefault(key_slot(f"b{j}") // width, f"b{j}")
        j += 1
    return [found[i] for i in range(n)]


class Keyspace:
    """Every name under one prefix (`sidecache:v1` by default), so nothing of the backend's is ever touched;
    `clustered` puts the bucket's hash tag in each name (module docstring)."""

    def __init__(self, prefix: str, *, clustered: bool = False) -> None:
        self.prefix = prefix
        self.channel = f"{prefix}:events"
        self.clustered = clustered
        self.tags = bucket_tags() if clustered else [""]

    def bucket(self, h: str) -> str:
        """The hash tag part of an entry's names ("" on one server)."""
        return f"{{{self.tags[int(h[:8], 16) % len(self.tags)]}}}:" if self.clustered else ""

    def buckets(self) -> list[str]:
        """Every bucket's name part: a purge by tag or route visits each."""
        return [f"{{{t}}}:" for t in self.tags] if self.clustered else [""]

    def entry(self, h: str) -> str:
        return f"{self.prefix}:entry:{self.bucket(h)}{h}"

    def lease(self, h: str) -> str:
        return f"{self.prefix}:lease:{self.bucket(h)}{h}"

    def tag(self, tag: str, bucket: str = "") -> str:
        return f"{self.prefix}:tag:{bucket}{tag}"

    def route(self, route: str, bucket: str = "") -> str:
        return f"{self.prefix}:route:{bucket}{route}"

    def entry_prefix(self, bucket: str = "") -> str:
        """What an entry's name is before its hash (the purge scripts build names from the hashes in an index)."""
        return f"{self.prefix}:entry:{bucket}"
