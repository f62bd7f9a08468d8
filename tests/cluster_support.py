"""Helpers of the Redis Cluster end-to-end tests (tests/test_cluster_e2e.py).

    cluster = RedisCluster().start()                    # tools/cluster.py
    spread = seed_spread(cluster, postgres_server, 20)  # {primary port: [(id, shop)]}
    await spublish(cluster, channel(mid, "stage"), {"m": mid})   # SPUBLISH on the owner
    await shard_numsub(cluster, [channel(mid)])         # {channel: subscribers on its owner}
    gateway_pubsub_clients(cluster, gw.pid)             # {node port: gateway pub/sub conns}
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis
from support import unique_merchant

from tools.cluster import RedisCluster, slot_of
from tools.services import HOST, PostgresServer

__all__ = [
    "CHANNEL",
    "channel",
    "gateway_pubsub_clients",
    "seed_spread",
    "shard_numsub",
    "spublish",
    "spublish_to",
]

CHANNEL = "merchant:{{{merchant_id}}}:{event}"  # the cluster default (README)


def channel(merchant_id: str, event: str = "progress") -> str:
    """The merchant's sharded channel under the cluster default template."""
    return CHANNEL.format(merchant_id=merchant_id, event=event)


def seed_spread(
    cluster: RedisCluster, postgres: PostgresServer, per_primary: int, prefix: str = "cl"
) -> dict[int, list[tuple[str, str]]]:
    """``per_primary`` fresh active merchants on every primary, inserted in PostgreSQL."""
    primaries = cluster.primaries()
    out: dict[int, list[tuple[str, str]]] = {n.port: [] for n in primaries}
    for _ in range(per_primary * len(primaries) * 20):  # bounded: slots are uniform
        if all(len(v) >= per_primary for v in out.values()):
            break
        mid, shop = unique_merchant(prefix)
        owner = next(n.port for n in primaries if n.owns(_slot(mid)))
        if len(out[owner]) < per_primary:
            postgres.add_merchant(mid, shop)
            out[owner].append((mid, shop))
    assert all(len(v) == per_primary for v in out.values()), out
    return out


def _slot(merchant_id: str) -> int:
    return slot_of(channel(merchant_id))


def _encode(payload: Any) -> str | bytes:
    return payload if isinstance(payload, str | bytes) else json.dumps(payload)


async def spublish_to(port: int, chan: str, payload: Any) -> int:
    """SPUBLISH on one node; how many of its clients received it."""
    client = aioredis.Redis(host=HOST, port=port, socket_timeout=5)
    try:
        return int(await client.execute_command("SPUBLISH", chan, _encode(payload)))
    finally:
        await client.aclose()


async def spublish(cluster: RedisCluster, chan: str, payload: Any) -> int:
    """SPUBLISH on the primary that owns the channel's slot now."""
    return await spublish_to(cluster.primary_for(chan).port, chan, payload)


async def shard_numsub(cluster: RedisCluster, channels: list[str]) -> dict[str, int]:
    """``PUBSUB SHARDNUMSUB`` of every channel, asked on the primary owning it."""
    by_owner: dict[int, list[str]] = defaultdict(list)
    for chan in channels:
        by_owner[cluster.primary_for(chan).port].append(chan)
    out: dict[str, int] = {}
    for port, chans in by_owner.items():
        client = aioredis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True)
        try:
            reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", *chans)
        finally:
            await client.aclose()
        if isinstance(reply, dict):
            pairs = list(reply.items())
        else:
            pairs = list(zip(reply[::2], reply[1::2], strict=True))
        out.update({str(k): int(v) for k, v in pairs})
    return out


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a multi-worker gateway forks)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def _local_ports(pids: list[int], remote_ports: set[int]) -> set[int]:
    """Local ports of the processes' TCP sockets connected to ``remote_ports`` (/proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[9] in inodes
                and int(fields[2].rsplit(":", 1)[1], 16) in remote_ports
            ):
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def gateway_pubsub_clients(cluster: RedisCluster, pid: int) -> dict[int, int]:
    """{node port: pub/sub connections (CLIENT LIST TYPE pubsub) held by the gateway
    process ``pid`` or its workers}, for every live node."""
    ports = _local_ports(_descendants(pid), set(cluster.servers))
    out: dict[int, int] = {}
    for node in cluster.live_ports():
        clients = cluster.call(node, "CLIENT", "LIST", "TYPE", "pubsub")
        count = 0
        for line in str(clients).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            addr = fields.get("addr", "")
            if addr.rsplit(":", 1)[-1].isdigit() and int(addr.rsplit(":", 1)[1]) in ports:
                count += 1
        out[node] = count
    return out
