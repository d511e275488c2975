"""Which headers cross the proxy: hop-by-hop ones stop here (RFC 9110 7.6.1), and the one builder of every header
set sent upstream, with its one drop list and the forwarding headers' trust policy.

sidecache is the first hop unless told otherwise: `X-Forwarded-For`, `-Proto`, `-Host` (and `Forwarded`, when a
client sent one) are written from what the proxy itself received, replacing a client's values; only a peer in
`[server] trusted_proxies` has its values kept (and appended to). A request whose answer is shared (a fill) carries
no header a single client could use to shape everyone's answer: not its conditions or ranges, and no
`X-Forwarded-Host` unless the rule keys on the Host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, Literal

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)
VIA: Final = "1.1 sidecache"
_FORWARDING: Final = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")

Purpose = Literal["pass", "fill", "websocket"]
# The one drop list, by what the request is for.
DROP: Final[dict[str, frozenset[str]]] = {
    # the client's own request, streamed: only what names the connection to the proxy
    "pass": frozenset({"host"}),
    # made on behalf of every client waiting on a key: never one client's conditions, ranges or encodings
    "fill": frozenset({
        "host", "content-length", "accept-encoding", "if-none-match", "if-modified-since", "if-match",
        "if-unmodified-since", "if-range", "range",
    }),
    # aiohttp's WebSocket client writes its own handshake
    "websocket": frozenset({
        "host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    }),
}


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy headers without the hop-by-hop ones, including any the Connection header names."""
    skip = _skip(drop)
    if "Connection" in headers:
        skip = skip | {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in skip])


_SKIPS: dict[Iterable[str], frozenset[str]] = {}


def _skip(drop: Iterable[str]) -> frozenset[str]:
    """The hop-by-hop names plus `drop`, lowercased: built once per drop list (there are a handful), not per
    request."""
    try:
        return _SKIPS[drop]
    except (KeyError, TypeError):  # a drop list not seen yet, or one that cannot be a key (a list)
        skip = HOP_BY_HOP | {d.lower() for d in drop}
        if isinstance(drop, (tuple, frozenset)) and len(_SKIPS) < 64:
            _SKIPS[drop] = skip
        return skip


# What is dropped from a peer whose forwarding headers are not believed: the drop list and those headers.
_UNTRUSTED_DROP: Final = {purpose: names | frozenset(_FORWARDING) for purpose, names in DROP.items()}


class Forwarding:
    """Whose forwarding headers to believe: the peers in `[server] trusted_proxies` (CIDRs); nobody's by default."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in trusted)

    def trusts(self, peer: str | None) -> bool:
        if not self.networks or not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


NOBODY: Final = Forwarding()


def upstream_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    purpose: Purpose,
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    trust: Forwarding = NOBODY,
    send_host: bool = True,
) -> CIMultiDict[str]:
    """Every header set the proxy sends upstream is built here: the client's end-to-end headers minus the purpose's
    drop list, then Via and the forwarding headers as this hop saw the request.

    `send_host` False: the answer is shared under a key the Host is not part of, so no X-Forwarded-Host."""
    trusted = trust.trusts(peer)
    out = end_to_end(headers, drop=DROP[purpose] if trusted else _UNTRUSTED_DROP[purpose])
    out.add("Via", VIA)
    if peer:
        prior = out.get("X-Forwarded-For") if trusted else None
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if not trusted or "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = scheme
    if send_host and host and (not trusted or "X-Forwarded-Host" not in out):
        out["X-Forwarded-Host"] = host
    elif not send_host:
        out.popall("X-Forwarded-Host", None)
    if "Forwarded" in headers:  # RFC 7239, only where the client's side already speaks it
        mine = ";".join(p for p in (f'for="{peer}"' if peer else "", f"proto={scheme}",
                                    f'host="{host}"' if host and send_host else "") if p)
        prior_fwd = out.get("Forwarded") if trusted else None
        out["Forwarded"] = f"{prior_fwd}, {mine}" if prior_fwd else mine
    return out
