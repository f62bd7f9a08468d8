"""A Redis Cluster as its nodes report it: ``CLUSTER NODES`` read into
:class:`ClusterNode` rows, and the slot of a key or sharded channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot

__all__ = ["ClusterNode", "parse_nodes", "slot_of"]


def slot_of(key: str | bytes) -> int:
    """The cluster slot of a key or sharded channel (hash tags honoured)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster sees it now."""

    port: int
    node_id: str
    role: str  # "primary" or "replica"
    primary_id: str | None  # the primary a replica follows
    slots: tuple[tuple[int, int], ...]  # inclusive ranges owned (primaries)
    pid: int | None
    alive: bool

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def parse_nodes(text: Any) -> dict[int, ClusterNode]:
    """One node's ``CLUSTER NODES`` answer: every node it knows, by port (no PID)."""
    out: dict[int, ClusterNode] = {}
    for line in str(text).splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        flags = parts[2].split(",")
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being imported or migrated
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        role = "primary" if "master" in flags else "replica"
        alive = not {"fail", "fail?", "noaddr"} & set(flags)
        primary = None if parts[3] == "-" else parts[3]
        out[port] = ClusterNode(port, parts[0], role, primary, tuple(slots), None, alive)
    return out
