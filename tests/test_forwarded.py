"""gateway.web.forwarded: which address a stream's log line names (unit)."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.web.forwarded import client_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def _request(peer: str, forwarded: str | None = None) -> Any:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    return SimpleNamespace(remote=peer, headers=headers)


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("203.0.113.7", None, "203.0.113.7"),                  # no proxy
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),        # untrusted peer: header ignored
    ("10.0.0.2", "198.51.100.1", "198.51.100.1"),          # through a trusted proxy
    ("10.0.0.2", "198.51.100.1, 10.0.0.9", "198.51.100.1"),  # two trusted hops
    ("10.0.0.2", "10.0.0.9", "10.0.0.9"),                  # trusted all the way
    ("fd00::2", "::ffff:198.51.100.1", "::ffff:198.51.100.1"),  # as written, not renamed
    ("10.0.0.2", "not-an-ip", "invalid"),
    ("10.0.0.2", "fe80::1%<script>", "invalid"),           # a zone is free text
    ("10.0.0.2", "fe80::1%eth0, 10.0.0.9", "invalid"),
])
def test_the_client_address_is_an_address_or_invalid(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert client_address(_request(peer, forwarded), PROXIES) == expected
