"""The client's address behind trusted proxies (`server.trusted_proxies`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

__all__ = ["client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.Request, trusted: Iterable[Network]) -> str:
    """The peer, or the nearest untrusted X-Forwarded-For hop when the peer is a proxy."""
    trusted = list(trusted)
    peer = request.remote or "-"
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")
    hops = [peer] + [h.strip() for h in reversed(forwarded) if h.strip()]
    for depth, hop in enumerate(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return "invalid"  # not an address: never log what the client wrote there
        if depth and getattr(address, "scope_id", None) is not None:
            return "invalid"  # "fe80::1%<any text>": a zone is free text, never logged
        if not any(address in net for net in trusted):
            return hop  # an address without a zone: digits, dots and colons only
    return hops[-1]
