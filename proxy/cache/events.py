"""What one process tells the others over Redis pub/sub: entries filled, leases released, purges."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from proxy.policy.entry import CachedResponse


class Selector(msgspec.Struct, frozen=True, array_like=True):
    """Which entries a purge removes; plain data, so the same purge can run in every tier and every process."""

    kind: Literal["all", "route", "tag", "key"]
    value: str = ""

    def matches(self, key: str, entry: CachedResponse) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "route":
            return entry.route == self.value
        if self.kind == "tag":
            return self.value in entry.tags
        return key == self.value


class Filled(msgspec.Struct, frozen=True, array_like=True, tag="fill"):
    """A process stored a new entry for key: older memory copies elsewhere are stale, lease waiters may read it."""

    origin: str
    key: str


class Released(msgspec.Struct, frozen=True, array_like=True, tag="release"):
    """A lease holder finished without storing anything: its waiters should try again themselves."""

    origin: str
    key: str


class Purged(msgspec.Struct, frozen=True, array_like=True, tag="purge"):
    """A purge ran on one process: every other process drops the matching memory copies."""

    origin: str
    selector: Selector


Event = Filled | Released | Purged

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event | None:
    """None for anything that is not one of our events (another version, or a stray publisher on the channel)."""
    try:
        event: Event = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return event
