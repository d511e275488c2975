"""What a cache tier stores for one response, and its wire form for shared tiers."""

from __future__ import annotations

from typing import Final

import msgspec

FORMAT_VERSION: Final = 1


class CachedResponse(msgspec.Struct, array_like=True, kw_only=True, dict=True, weakref=True):
    """A complete, storable response plus its freshness, as one msgpack array.

    `dict=True` lets the hit path keep the entry's pre-encoded head on it (serving/answer.py `stored_head`); that
    attribute is not a field, so no tier ever stores it, and `msgspec.structs.replace` starts without it.
    `weakref=True`: the echoed bodies made from an entry (serving/echoes.py) refer to it without keeping it alive."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float
    ttl: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    tags: list[str] = []
    route: str = ""
    vary: list[str] = []  # set on a variant marker (status 0): the request headers that pick the variant
    keep: float = 0.0  # kept this long past every window, only to be revalidated with the origin (Varnish's keep)
    source: str = ""  # "batch": what the rule's batch endpoint answered for this item (a client's batch may reuse it)
    date: str = ""  # the origin's Date, sent again with every answer from the entry ("": the time of the answer)
    gzip: bytes = b""  # the body gzip-coded once at store time, for clients that accept it (policy/encoding.py)

    @property
    def is_marker(self) -> bool:
        """A Vary marker (status 0): the answer lives under a variant key, picked by the `vary` request headers."""
        return self.status == 0

    @property
    def expires_at(self) -> float:
        return self.stored_at + self.ttl

    @property
    def keep_until(self) -> float:
        """After this, no stale window can use the entry and a tier may drop it."""
        swr, sie = self.stale_while_revalidate, self.stale_if_error  # max() without its call: every hit asks this
        return self.stored_at + self.ttl + (swr if swr > sie else sie) + self.keep

    @property
    def size(self) -> int:
        """Bytes the entry costs a tier: the body, its headers and their pre-encoded copy (close enough to bound
        memory)."""
        return len(self.body) + len(self.gzip) + 2 * sum(len(k) + len(v) + 4 for k, v in self.headers) + 128


class _Envelope(msgspec.Struct, array_like=True):
    version: int
    entry: CachedResponse


def _plain(value: object) -> object:
    """Subclasses msgpack does not know (a CIMultiDict's `istr` names, a rule's `Duration`) stored as the base type."""
    for base in (str, float, int):
        if isinstance(value, base):
            return base(value)
    raise NotImplementedError(f"cannot encode {type(value)!r}")


_encoder: Final = msgspec.msgpack.Encoder(enc_hook=_plain)
_decoder: Final = msgspec.msgpack.Decoder(_Envelope)


def encode(entry: CachedResponse) -> bytes:
    """msgpack with a format version, so a newer sidecache never misreads an older entry."""
    return _encoder.encode(_Envelope(FORMAT_VERSION, entry))


def decode(data: bytes) -> CachedResponse | None:
    """None for an entry of another format version or one that does not decode: treat it as a miss."""
    try:
        env = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return env.entry if env.version == FORMAT_VERSION else None
