"""Redis Cluster topology: which primary owns each slot, discovered from any node.

`CLUSTER SLOTS` is asked of the seed URL first, then of every node seen in an
earlier answer, so a dead seed or a failed-over primary does not blind the
gateway. Node URLs keep the seed's scheme, credentials and options (TLS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.crc import key_slot

from .connection import FAULTS

__all__ = ["SLOTS", "ClusterTopology", "key_slot"]

log = logging.getLogger(__name__)

SLOTS = 16384
_PROBE_TIMEOUT_S = 1.0


class ClusterTopology:
    def __init__(self, seed_url: str) -> None:
        self._seed = urlsplit(seed_url)
        self.owners: list[str] = []  # slot -> "host:port" of its primary; empty: unknown
        self._nodes: list[str] = []  # every node seen, primaries and replicas

    @property
    def known(self) -> bool:
        return bool(self.owners)

    @property
    def primaries(self) -> set[str]:
        return set(self.owners)

    def owner(self, channel: bytes) -> str:
        return self.owners[key_slot(channel)]

    def channel_on(self, address: str, prefix: str) -> bytes:
        """A channel `prefix:{tag}` whose slot lives on `address` (for that node's canary)."""
        for tag in range(100_000):
            channel = f"{prefix}:{{{tag}}}".encode()
            if self.owner(channel) == address:
                return channel
        raise RuntimeError(f"no slot of {address} found for a control channel")

    def url(self, address: str) -> str:
        """The seed URL pointed at `address` ("host:port")."""
        seed = self._seed
        userinfo = seed.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{address}" if userinfo else address
        return urlunsplit((seed.scheme, netloc, seed.path, seed.query, seed.fragment))

    async def refresh(self) -> bool:
        """Re-read the slot map; True when it changed. Raises when no node answers."""
        seed = f"{self._seed.hostname}:{self._seed.port or 6379}"
        errors: dict[str, str] = {}
        for address in dict.fromkeys([seed, *self.primaries, *self._nodes]):
            try:
                reply = await self._slots(address)
            except FAULTS as exc:  # e.g. AuthenticationError: say why (never the URL)
                errors[address] = f"{type(exc).__name__}: {exc}"
                continue
            if reply:
                return self._apply(reply, address)
        detail = "; ".join(f"{address} {error}" for address, error in errors.items())
        raise ConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS ({detail})")

    async def _slots(self, address: str) -> list[list[Any]]:
        client = aioredis.Redis.from_url(
            self.url(address),
            socket_timeout=_PROBE_TIMEOUT_S,
            socket_connect_timeout=_PROBE_TIMEOUT_S,
            protocol=2,
        )
        try:
            return list(await client.execute_command("CLUSTER", "SLOTS"))
        finally:
            await client.aclose()

    def _apply(self, reply: Iterable[list[Any]], asked: str) -> bool:
        owners = [""] * SLOTS
        nodes: list[str] = []
        default_host = asked.rpartition(":")[0]
        for start, end, *holders in reply:
            addresses = [_address(holder, default_host) for holder in holders]
            nodes.extend(addresses)
            owners[int(start) : int(end) + 1] = [addresses[0]] * (int(end) - int(start) + 1)
        if "" in owners:
            log.warning("redis cluster: %d slots have no primary", owners.count(""))
        changed = owners != self.owners
        self.owners, self._nodes = owners, nodes
        return changed


def _address(holder: object, default_host: str) -> str:
    host, port = holder[0], holder[1]  # type: ignore[index]
    host = host.decode() if isinstance(host, bytes) else str(host)
    return f"{host or default_host}:{int(port)}"
