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

from servefleet.http.fields import Fields, first

__all__ = [
    "HOP_BY_HOP",
    "ProxyNetwork",
    "answer_fields",
    "is_trusted",
    "upstream_fields",
]

ProxyNetwork = IPv4Network | IPv6Network

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Not forwarded upstream on top of the hop-by-hop set: this server has already
# answered any `Expect: 100-continue`.
_REQUEST_ONLY = HOP_BY_HOP | {b"expect"}
_FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)
_UNTRUSTED = _REQUEST_ONLY | _FORWARDING
_REWRITTEN = frozenset({b"x-forwarded-for", b"x-forwarded-prefix"})
"""What a trusted proxy sent of these is extended, not kept as is."""


def _connection_tokens(fields: Fields) -> frozenset[bytes]:
    """The fields the (first) Connection header names, which end at this hop too."""
    connection = first(fields, b"connection")
    if not connection:
        return frozenset()
    return frozenset(token.strip().lower() for token in connection.split(b","))


def _kept(fields: Fields, drop: frozenset[bytes]) -> Fields:
    """`fields` without those in `drop`, nor any the Connection header names."""
    kept = [(name, value) for name, value in fields if name.lower() not in drop]
    if len(kept) < len(fields):
        tokens = _connection_tokens(fields)
        if tokens:
            kept = [(name, value) for name, value in kept if name.lower() not in tokens]
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


def upstream_fields(
    incoming: Fields,
    *,
    peer: str | None,
    scheme: bytes,
    prefix: str,
    trusted: bool,
) -> Fields:
    """The header fields a request carries to its replica. `peer` is the address
    that connected to the gateway, `scheme` how (b"http" or b"https"), `prefix` the
    route prefix taken off the path ("/" takes nothing off), `trusted` whether `peer`
    is a front proxy whose forwarding headers are to be believed."""
    # A Connection header is always dropped; when it is the only field dropped it
    # names nothing else to drop (it names itself at most).
    headers = _kept(incoming, (_REQUEST_ONLY | _REWRITTEN) if trusted else _UNTRUSTED)
    if peer is not None:
        chain = (
            b", ".join(value for name, value in incoming if name.lower() == b"x-forwarded-for")
            if trusted
            else b""
        )
        address = peer.encode("latin-1")
        headers.append((b"x-forwarded-for", chain + b", " + address if chain else address))
    elif trusted:
        headers += [(name, value) for name, value in incoming if name.lower() == b"x-forwarded-for"]
    if not (trusted and first(incoming, b"x-forwarded-proto") is not None):
        headers.append((b"x-forwarded-proto", scheme))
    host = first(incoming, b"host")
    if host is not None and not (trusted and first(incoming, b"x-forwarded-host") is not None):
        headers.append((b"x-forwarded-host", host))
    if prefix != "/":
        outer = first(incoming, b"x-forwarded-prefix") if trusted else None
        headers.append(
            (
                b"x-forwarded-prefix",
                (outer or b"").rstrip(b"/") + prefix.encode("utf-8", "surrogateescape"),
            )
        )
    elif trusted:  # nothing taken off: what the front proxy said stands
        headers += [
            (name, value) for name, value in incoming if name.lower() == b"x-forwarded-prefix"
        ]
    return headers


def answer_fields(incoming: Fields, drop: frozenset[bytes]) -> tuple[bytes, bytes | None]:
    """A replica's answer header fields as they go to the client, formatted, without
    those in `drop` (the hop-by-hop ones, `HOP_BY_HOP`, and what the gateway writes
    itself; a constant, not made per answer), those the Connection header names, and
    the first Content-Length, which is returned apart (the client's framing is the
    gateway's to write)."""
    lines, length, connection = _answer_lines(incoming, drop)
    if connection:
        tokens = _connection_tokens(incoming)
        if tokens:
            lines, length, _ = _answer_lines(incoming, drop | tokens)
    return lines, length


def _answer_lines(
    incoming: Fields, drop: frozenset[bytes]
) -> tuple[bytes, bytes | None, bytes | None]:
    """The formatted fields not in `drop`, the first Content-Length and the first
    Connection header."""
    length = connection = None
    lines = []
    for name, value in incoming:
        key = name.lower()
        if key in drop:
            if key == b"connection" and connection is None:
                connection = value
            continue
        if key == b"content-length" and length is None:
            length = value
            continue
        lines.append(name + b": " + value + b"\r\n")
    return b"".join(lines), length, connection
