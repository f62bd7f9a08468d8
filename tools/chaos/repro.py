"""Deterministic reproductions of what chaos runs found, one scenario each:

    python -m tools.chaos.repro head | late-resync | moved

``head``: a reconnect joins a history-head check that another reconnect of its
merchant began before the client's event was published: ``resync
history_gap`` for an id the history holds, then that very event again (fixed
in 9b843a7). ``late-resync``: a reconnect whose id is trimmed gets the live
events queued while the history was read *before* its ``resync`` (fixed in
9b843a7). ``moved``: after a Redis Cluster failover the gateway's cluster
client (no retries) failed the first MULTI of a moved slot with MOVED. Until
9b843a7 the envelope check read that as "not in the history" and sent a
genuine durable event as a plain one (chaos cluster seed 11); then it trusted
the id, but a snapshot or history read that met the MOVED still failed (a
resync without snapshot, or ``history_gap`` for a reconnect). A MULTI is now
sent once more after a MOVED (``durable/history.py``).

``head`` and ``late-resync`` slow one gateway's link to Redis with
:class:`~tools.chaos.lag.LagLink` so the window is hundreds of milliseconds
wide instead of one. Each prints what the client got and exits 1 while the
behaviour reproduces, 0 once it no longer does. Loopback only; every process
it starts is stopped by PID.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tools.gateway import REPO_ROOT, GatewayServer, child_env
from tools.services import PostgresServer, RedisServer, free_port

from .lag import LagLink
from .publishers import helper_for
from .topology import gateway_config

__all__ = ["main"]

M, SHOP, PATH, LAG_MS = "repro-m", "repro-m.myshopify.com", "/api/realtime/events", 300.0
Frames = list[tuple[str, str | None, str]]


async def _frames(http: aiohttp.ClientSession, gw: GatewayServer, last: str | None, n: int,
                  within_s: float = 3.0) -> Frames:
    """Up to ``n`` frames (event, id, data) of one stream, for at most ``within_s``."""
    out: Frames = []
    headers = {"Last-Event-ID": last} if last else {}
    event, event_id, data = "", None, ""
    try:
        async with asyncio.timeout(within_s), http.get(
                f"{gw.base_url}{PATH}?shop={SHOP}", headers=headers) as resp:
            while len(out) < n and (raw := await resp.content.readline()):
                line = raw.decode().rstrip("\n")
                if line == "" and (event or event_id):
                    out.append((event or "message", event_id, data))
                    event, event_id, data = "", None, ""
                elif line.startswith(("event:", "id:", "data:")):
                    name, _, value = line.partition(": ")
                    event, event_id, data = (value, event_id, data) if name == "event" else (
                        (event, value, data) if name == "id" else (event, event_id, value))
    except TimeoutError:
        pass
    return out


async def _lagging(scenario: Any) -> int:
    """Redis, PostgreSQL, one gateway behind a lagging link (on); run ``scenario``."""
    redis, pg = RedisServer().start(), PostgresServer().start()
    link = gw = None
    http = aiohttp.ClientSession()
    client = aioredis.Redis.from_url(redis.url)
    try:
        pg.apply_schema(REPO_ROOT / "config" / "schema.sql")
        pg.add_merchant(M, SHOP)
        link = LagLink(redis.port, LAG_MS).start()
        env = child_env({"REDIS_URL": link.url, "DATABASE_URL": pg.dsn, "GATEWAY_CONFIG": None})
        gw = GatewayServer(gateway_config(free_port(), 1, False, "k" * 32, roomy=True),
                           env).start(60)
        publish = helper_for(client, "merchant:{merchant_id}:{event}", 100, False).publish
        holder = asyncio.ensure_future(_frames(http, gw, None, 10**6, 60))  # keeps M held
        try:
            return int(await scenario(http, gw, link, publish, client))
        finally:
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
    finally:
        await http.close()
        await client.aclose()
        for service in (gw, link, pg, redis):
            if service is not None:
                service.stop()


async def _hmgets(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def _head(http: aiohttp.ClientSession, gw: GatewayServer, link: LagLink,
                publish: Any, client: aioredis.Redis) -> bool:
    ids = [await publish(M, "stage", {"n": n}) for n in range(1, 6)]
    print("warm-up:", await _frames(http, gw, ids[-2], 2))  # T has read ep:5; pool is open
    link.on()
    before = await _hmgets(client)
    first = asyncio.ensure_future(_frames(http, gw, ids[-1], 2))  # a ring hit: HMGET sent
    for _ in range(300):  # until Redis ran it (its answer then takes LAG_MS to arrive)
        if await _hmgets(client) > before:
            break
        await asyncio.sleep(0.01)  # another process's counter: polled, bounded
    else:
        print("no head check reached Redis")
    six = await publish(M, "stage", {"n": 6})
    second = await _frames(http, gw, six, 3)  # joins that HMGET: the head it reads is 5
    print(f"first  (Last-Event-ID {ids[-1]}):", await first)
    print(f"second (Last-Event-ID {six}):", second)
    return any(e == "resync" for e, _, _ in second)


async def _late_resync(http: aiohttp.ClientSession, gw: GatewayServer, link: LagLink,
                       publish: Any, client: aioredis.Redis) -> bool:
    ids = [await publish(M, "stage", {"n": n}) for n in range(1, 151)]  # history keeps 100
    link.on()
    reconnect = asyncio.ensure_future(_frames(http, gw, ids[9], 3))  # ep:10, trimmed
    await asyncio.sleep(LAG_MS / 3000)  # its HMGET is on its way; the read comes next
    await publish(M, "stage", {"n": 151})  # reaches the process while the read is out
    got = await reconnect
    print(f"reconnect (Last-Event-ID {ids[9]}, trimmed):", got)
    events = [e for e, _, _ in got]
    return "resync" in events and events.index("resync") > 1


async def _moved() -> int:
    from gateway.broker.connection import make_cluster_client
    from gateway.durable.history import DurableHistory
    from gateway.durable.history_checks import holds_many
    from gateway.durable.ids import DurableId, history_keys
    from tools.cluster import RedisCluster

    cluster = RedisCluster().start()
    try:
        client = make_cluster_client(cluster.url, 4)  # what the gateway reads through
        history = DurableHistory(client, channel="merchant:{{{merchant_id}}}:{event}",
                                 history=100, ttl_s=600, sharded=True)
        owners: dict[int, str] = {}  # one merchant per primary: each read meets its own MOVED
        for n in range(200):
            owners.setdefault(cluster.primary_for(history_keys(f"m{n}")[1]).port, f"m{n}")
        check, snapshot, replay = owners.values()
        durable = DurableId.parse(await history.publish(check, "stage", b'{"n":1}'))
        assert durable is not None
        claim = [(check, durable, "stage", b'{"n":1}')]
        print("before failover: holds ->", await holds_many(client, claim))
        for primary in list(owners):
            cluster.failover(primary)
        reads = {
            "envelope check": lambda: holds_many(client, claim),
            "snapshot read": lambda: history.read_jobs(snapshot),
            "history read": lambda: history.read_all(replay),
        }
        failed = False
        for what, read in reads.items():  # each the first command of its slot since it moved
            try:
                print(f"after failover, {what}: ok ({type(await read()).__name__})")
            except Exception as exc:
                failed = True
                print(f"after failover, {what}: {type(exc).__name__}: {exc}")
        await history.close()
        return int(failed)
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["head"]:
        code = asyncio.run(_lagging(_head))
    elif args == ["late-resync"]:
        code = asyncio.run(_lagging(_late_resync))
    elif args == ["moved"]:
        code = asyncio.run(_moved())
    else:
        print(__doc__)
        return 2
    print("reproduced" if code else "not reproduced")
    return code


if __name__ == "__main__":
    sys.exit(main())
