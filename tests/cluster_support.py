# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""Helpers of the Redis Cluster end-to-end tests (tests/test_cluster*_e2e.py).

    cluster = RedisCluster().start()                    # tools/cluster.py
    spread = seed_spread(cluster, postgres_server, 20)  # {primary port: [(id, shop)]}
    await spublish(cluster, channel(mid, "stage"), {"m": mid})   # SPUBLISH on the owner
    await shard_numsub(cluster, [channel(mid)])         # {channel: subscribers on its owner}
    gateway_pubsub_clients(cluster, gw.pid)             # {node port: gateway pub/sub conns}
    await subscribed(cluster, [mid], gw); await post(gw, {...})   # SSUBSCRIBEd; durable
    health_nodes(body)                                  # /health's redis.nodes by port

A cluster started with a password (``RedisCluster(password=...)``) is used
with it: every helper that talks to a node takes ``cluster.password``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from support import Event, SSEStream, http_json, unique_merchant, wait_for

from tools.cluster import RedisCluster, slot_of
from tools.services import HOST, PostgresServer

__all__ = [
    "AUTH",
    "CHANNEL",
    "CONFIG",
    "KEY",
    "channel",
    "connected",
    "gateway_pubsub_clients",
    "health_nodes",
    "is_end",
    "post",
    "seed_spread",
    "serving",
    "session",
    "shard_numsub",
    "spublish",
    "spublish_to",
    "subscribed",
    "summary",
    "until",
]

CHANNEL = "merchant:{{{merchant_id}}}:{event}"  # the cluster default (README)
KEY = "cluster-e2e-publish-key-3b8d1e"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CONFIG = {"redis": {"cluster": True, "history_ttl": 600}, "auth": {"publish_key": KEY}}


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


async def spublish_to(port: int, chan: str, payload: Any, password: str | None = None) -> int:
    """SPUBLISH on one node; how many of its clients received it."""
    client = aioredis.Redis(host=HOST, port=port, password=password, socket_timeout=5)
    try:
        return int(await client.execute_command("SPUBLISH", chan, _encode(payload)))
    finally:
        await client.aclose()


async def spublish(cluster: RedisCluster, chan: str, payload: Any) -> int:
    """SPUBLISH on the primary that owns the channel's slot now."""
    return await spublish_to(cluster.primary_for(chan).port, chan, payload, cluster.password)


async def shard_numsub(cluster: RedisCluster, channels: list[str]) -> dict[str, int]:
    """``PUBSUB SHARDNUMSUB`` of every channel, asked on the primary owning it."""
    by_owner: dict[int, list[str]] = defaultdict(list)
    for chan in channels:
        by_owner[cluster.primary_for(chan).port].append(chan)
    out: dict[str, int] = {}
    for port, chans in by_owner.items():
        client = aioredis.Redis(host=HOST, port=port, password=cluster.password,
                                socket_timeout=5, decode_responses=True)
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


def health_nodes(body: Any) -> dict[int, str]:
    """/health's ``redis.nodes`` as {primary port: "ok" | "fail"} (keys are node addresses)."""
    nodes = body["redis"]["nodes"]
    out: dict[int, str] = {}
    for address, status in nodes.items():
        port = urlsplit(address if "://" in address else f"//{address}").port
        assert port is not None, f"a node address without a port: {address}"
        out[port] = status
    assert len(out) == len(nodes), f"two addresses on one port: {nodes}"
    return out


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session for many long-lived streams (no pool limit, no read timeout)."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        auto_decompress=False,
    ) as s:
        yield s


async def connected(s: SSEStream) -> None:
    """The stream answered 200 and its first event is ``connected``."""
    if s.status != 200:
        raise AssertionError(f"status {s.status}: {await s.json_body()}")
    ev = await s.next_event(10)
    assert ev.event == "connected", ev


async def post(gw: Any, body: Any) -> Any:
    """POST {path}/publish (durable); the JSON reply, asserted 200."""
    status, _, reply = await http_json(
        gw.url(f"{gw.path}/publish"), "POST", AUTH, data=io.BytesIO(json.dumps(body).encode())
    )
    assert status == 200, (status, reply)
    return reply


async def serving(gw: Any) -> Any:
    """`gw` once /health says 200: every primary's subscriber link is up. The process
    answers /health/live before it has read the cluster's topology and connected."""

    async def healthy() -> bool:
        status, _, _ = await http_json(gw.url("/health"))
        return status == 200

    await wait_for(healthy, 15)  # type: ignore[arg-type]
    return gw


async def subscribed(cluster: RedisCluster, mids: list[str], gw: Any, n: int = 1) -> None:
    """Wait until every merchant's progress channel has ``n`` subscribers on its owner."""
    chans = [channel(m) for m in mids]

    async def ready() -> bool:
        counts = await shard_numsub(cluster, chans)
        return all(counts[c] == n for c in chans)

    try:
        await wait_for(ready, 15)  # type: ignore[arg-type]
    except TimeoutError as exc:
        counts = await shard_numsub(cluster, chans)
        raise AssertionError(
            f"{exc}: not subscribed once on the owner: "
            f"{ {c: k for c, k in counts.items() if k != n} }; log:\n{gw.log_text()[-2000:]}"
        ) from None


async def until(s: SSEStream, pred: Any, timeout: float = 10) -> list[Event]:
    """Events up to and including the first that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    out: list[Event] = []
    while not out or not pred(out[-1]):
        out.append(await s.next_event(max(0.0, deadline - time.monotonic())))
    return out


def is_end(ev: Event) -> bool:
    return ev.event == "completion" and ev.json().get("end") is True


def summary(events: list[Event]) -> list[tuple[str, Any]]:
    """(event, data["m"] or the raw data) of each event."""
    return [(e.event, e.json().get("m") if e.data.startswith("{") else e.data) for e in events]
