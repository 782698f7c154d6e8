"""Which headers cross the gateway, and what it says about the request it forwards.

A replica sees the client's own `Host`, and learns the rest from `X-Forwarded-For`
(who connected), `X-Forwarded-Proto` (the scheme the client used),
`X-Forwarded-Host` (the host it asked for) and `X-Forwarded-Prefix` (the route
prefix the gateway took off, e.g. "/inference/llm"). A client can write these
headers itself, so what arrives with a request is believed only from a trusted
front proxy (the gateway's `trusted_proxies`): then its chain is kept and extended;
from anyone else every incoming forwarding header (`Forwarded` and `X-Real-IP`
included) is dropped and the gateway writes its own. A replica that rate-limits or
audits by client address can then trust what it reads.
"""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Network, IPv6Network, ip_address

from multidict import CIMultiDict, MultiMapping

__all__ = ["HOP_BY_HOP", "ProxyNetwork", "is_trusted", "upstream_headers", "without"]

ProxyNetwork = IPv4Network | IPv6Network

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not forwarded upstream on top of the hop-by-hop set: this server has already
# answered any `Expect: 100-continue`.
_REQUEST_ONLY = HOP_BY_HOP | {"expect"}
_FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
_UNTRUSTED = _REQUEST_ONLY | _FORWARDING


def without(headers: MultiMapping[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """`headers` without the fields in `drop`, nor any the Connection header names."""
    # Copying whole and deleting the few present is cheaper than a Python loop
    # over every field, and this runs twice per request.
    kept = CIMultiDict(headers)
    connection = headers.get("connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name in drop:
        if name in kept:
            del kept[name]
    return kept


def is_trusted(peer: str | None, proxies: Collection[ProxyNetwork]) -> bool:
    """Whether the address that connected belongs to a trusted front proxy."""
    if not proxies or peer is None:
        return False
    try:
        address = ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def upstream_headers(
    incoming: MultiMapping[str],
    *,
    peer: str | None,
    scheme: str,
    prefix: str,
    trusted: bool,
) -> CIMultiDict[str]:
    """The headers a request carries to its replica. `peer` is the address that
    connected to the gateway, `scheme` how (http or https), `prefix` the route prefix
    taken off the path ("/" takes nothing off), `trusted` whether `peer` is a front
    proxy whose forwarding headers are to be believed."""
    headers = without(incoming, _REQUEST_ONLY if trusted else _UNTRUSTED)
    if peer is not None:
        chain = ", ".join(incoming.getall("x-forwarded-for", ())) if trusted else ""
        headers["x-forwarded-for"] = f"{chain}, {peer}" if chain else peer
    if not (trusted and "x-forwarded-proto" in incoming):
        headers["x-forwarded-proto"] = scheme
    host = incoming.get("host")
    if host is not None and not (trusted and "x-forwarded-host" in incoming):
        headers["x-forwarded-host"] = host
    if prefix != "/":
        outer = incoming.get("x-forwarded-prefix", "") if trusted else ""
        headers["x-forwarded-prefix"] = outer.rstrip("/") + prefix
    return headers
