"""Which headers cross the proxy: hop-by-hop ones stop here (RFC 9110 7.6.1), forwarding ones are added."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)
VIA: Final = "1.1 sidecache"


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy headers without the hop-by-hop ones, including any the Connection header names."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    skip = HOP_BY_HOP | named | {d.lower() for d in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def add_forwarding(
    headers: CIMultiDict[str], *, client_ip: str | None, proto: str, host: str | None
) -> CIMultiDict[str]:
    """Via and the de-facto X-Forwarded-* trio, appending to what an earlier proxy wrote."""
    headers.add("Via", VIA)
    if client_ip:
        prior = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    headers.setdefault("X-Forwarded-Proto", proto)
    if host:
        headers.setdefault("X-Forwarded-Host", host)
    return headers
