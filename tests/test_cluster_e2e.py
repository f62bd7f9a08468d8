"""End to end on a real local Redis Cluster (3 primaries + 3 replicas, tools/cluster.py).

`redis.cluster: true`: sharded pub/sub (SSUBSCRIBE on the primary owning each
merchant's slot), one pub/sub connection per primary per process, slot moves
followed with `resync` only for the merchants affected, /health over every
primary, durable publishing and replay on the cluster. One cluster (no
password) for the module; every test uses its own merchants and gateways.
Failover and credentials: tests/test_cluster_auth_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import (
    CONFIG,
    channel,
    connected,
    gateway_pubsub_clients,
    health_nodes,
    is_end,
    post,
    seed_spread,
    serving,
    session,
    shard_numsub,
    spublish,
    spublish_to,
    subscribed,
    summary,
    until,
)
from ops_support import get_health
from support import ISOLATED_ENV, open_stream

from gateway.durable.ids import DurableId
from tools.cluster import RedisCluster, slot_of

pytestmark = [
    pytest.mark.timeout(60),
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One 3-primary, 3-replica cluster for the module, stopped by PID at the end."""
    with RedisCluster() as c:
        yield c


async def test_sixty_merchants_get_their_own_events_only(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    spread = seed_spread(cluster, postgres_server, 20)
    merchants = [m for ms in spread.values() for m in ms]
    gw = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))
    async with session() as http, contextlib.AsyncExitStack() as stack:
        streams = {
            mid: await stack.enter_async_context(open_stream(gw.stream_url(shop), session=http))
            for mid, shop in merchants
        }
        await asyncio.gather(*(connected(s) for s in streams.values()))
        await subscribed(cluster, list(streams), gw)
        for mid in streams:  # plain SPUBLISH on the owning primary
            got = await spublish(cluster, channel(mid), {"jobId": mid, "m": mid})
            assert got == 1, f"SPUBLISH {channel(mid)} reached {got} subscribers"
        reply = await post(gw, [{"merchantId": m, "event": "stage", "data": {"m": m}}
                                for m in streams])
        assert len(reply["ids"]) == len(streams), reply
        for mid in streams:
            await spublish(cluster, channel(mid, "completion"), {"m": mid, "end": True})
        got_all = await asyncio.gather(*(until(s, is_end, 15) for s in streams.values()))
    for (mid, events), durable_id in zip(zip(streams, got_all, strict=True), reply["ids"],
                                          strict=True):
        assert summary(events) == [("progress", mid), ("stage", mid), ("completion", mid)], (
            mid, events)
        assert events[1].id == durable_id, events


async def test_one_pubsub_connection_per_primary_and_one_subscription_per_merchant(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    spread = seed_spread(cluster, postgres_server, 2)
    merchants = [m for ms in spread.values() for m in ms]
    busy_mid, busy_shop = merchants[0]
    gw = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))
    async with session() as http, contextlib.AsyncExitStack() as stack:
        busy = [await stack.enter_async_context(open_stream(gw.stream_url(busy_shop), session=http))
                for _ in range(5)]
        others = [await stack.enter_async_context(open_stream(gw.stream_url(shop), session=http))
                  for _, shop in merchants[1:]]
        await asyncio.gather(*(connected(s) for s in busy + others))
        await subscribed(cluster, [m for m, _ in merchants], gw)

        per_node = gateway_pubsub_clients(cluster, gw.pid)
        primaries = {n.port for n in cluster.primaries()}
        expected = {port: 1 if port in primaries else 0 for port in per_node}
        assert per_node == expected, (
            f"gateway pub/sub connections per node {per_node}, primaries {sorted(primaries)}"
        )
        status, body, _ = await get_health(gw)  # every primary listed and proven, no replica
        assert status == 200, body
        assert health_nodes(body) == dict.fromkeys(primaries, "ok"), body
        assert body["redis"]["status"] == "ok", body
        assert isinstance(body["redis"]["latency_ms"], int | float), body
        assert body["delivery"]["status"] == "ok", body
        events = ["progress", "stage", "completion", "error"]
        counts = await shard_numsub(cluster, [channel(busy_mid, e) for e in events])
        assert counts == {channel(busy_mid, e): 1 for e in events}, counts

        got = await spublish(cluster, channel(busy_mid, "stage"), {"m": busy_mid})
        assert got == 1, got  # one subscription, fanned out by the gateway
        for s in busy:
            assert summary([await s.next_event(5)]) == [("stage", busy_mid)]
        for s in busy[1:]:
            await s.close()
        assert (await shard_numsub(cluster, [channel(busy_mid)]))[channel(busy_mid)] == 1
        assert gateway_pubsub_clients(cluster, gw.pid) == expected


async def test_slot_migration_keeps_streams_and_history(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    """A subscribed slot moves (unasked SUNSUBSCRIBE); then an unsubscribed one does, and
    its merchant's first SSUBSCRIBE reaches the old owner, which answers MOVED."""
    spread = seed_spread(cluster, postgres_server, 2, prefix="mv")
    ports = list(spread)
    (moving, moving_shop), (same_node, same_shop) = spread[ports[0]]
    (other, other_shop), _ = spread[ports[1]]
    late, late_shop = spread[ports[2]][0]
    slot, late_slot = slot_of(channel(moving)), slot_of(channel(late))
    assert len({slot, late_slot, slot_of(channel(same_node))}) == 3
    gw = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))
    async with session() as http, contextlib.AsyncExitStack() as stack:
        def opened(shop: str) -> Any:
            return stack.enter_async_context(open_stream(gw.stream_url(shop), session=http))

        movers = [await opened(moving_shop), await opened(moving_shop)]
        bystanders = {same_node: await opened(same_shop), other: await opened(other_shop)}
        await asyncio.gather(*(connected(s) for s in movers + list(bystanders.values())))
        await subscribed(cluster, [moving, same_node, other], gw)

        first = (await post(gw, {"merchantId": moving, "event": "stage", "data": {"n": 1}}))["id"]
        for s in movers:
            assert (await s.next_event(5)).id == first
        source = cluster.primary_for(slot).port
        assert cluster.call(source, "CLUSTER", "COUNTKEYSINSLOT", slot) >= 1  # history is there
        target = ports[1] if source != ports[1] else ports[2]

        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        assert cluster.primary_for(slot).port == target
        assert cluster.call(target, "CLUSTER", "COUNTKEYSINSLOT", slot) >= 1
        await subscribed(cluster, [moving], gw)  # now on the new owner
        refreshed = time.monotonic()  # the gateway has just re-read the slot map

        # no push tells the gateway about a slot it holds nothing in, and its next periodic
        # re-read is 5 s away: only the MOVED answer to the SSUBSCRIBE on the old owner
        # brings `late` to its new owner in time
        await asyncio.to_thread(cluster.migrate_slot, late_slot, ports[0])
        opened_at = time.monotonic()
        assert opened_at - refreshed < 2.5, "the migration took too long to test MOVED"
        late_stream = await opened(late_shop)
        await connected(late_stream)
        waited = time.monotonic() - opened_at
        assert waited < 2, f"subscribed after {waited:.1f}s: by the periodic re-read, not MOVED"
        await subscribed(cluster, [late], gw)
        assert await spublish_to(ports[0], channel(late, "stage"), {"n": 1}) == 1
        late_events = await until(late_stream, lambda e: e.event == "stage")
        assert late_events[-1].json() == {"n": 1}, late_events

        assert await spublish_to(target, channel(moving, "stage"), {"n": 2}) == 1
        second = (await post(gw, {"merchantId": moving, "event": "stage", "data": {"n": 3}}))["id"]
        before, after = DurableId.parse(first), DurableId.parse(second)
        assert before and after and (after.epoch, after.offset) == (before.epoch, before.offset + 1)
        for s in movers:
            events = await until(s, lambda e: e.id == second)
            live = [e for e in events if e.event != "resync"]
            assert [e.json()["n"] for e in live] == [2, 3], events
            assert all(e.json() == {"reason": "redis_reconnected"}
                       for e in events if e.event == "resync"), events

        for mid, s in bystanders.items():
            await spublish(cluster, channel(mid, "completion"), {"m": mid, "end": True})
            events = await until(s, is_end)
            assert summary(events) == [("completion", mid)], events  # no resync


async def test_durable_replay_across_two_gateways_on_a_cluster(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    spread = seed_spread(cluster, postgres_server, 1, prefix="rp")
    mid, shop = next(iter(spread.values()))[0]
    gw_a = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))
    gw_b = await serving(await gateway_factory.astart(config=CONFIG, redis=cluster.url))

    def batch(ns: range) -> list[dict[str, Any]]:
        return [{"merchantId": mid, "event": "stage", "data": {"n": n}} for n in ns]

    async with open_stream(gw_a.stream_url(shop)) as s:
        await connected(s)
        await subscribed(cluster, [mid], gw_a)
        ids = (await post(gw_a, batch(range(1, 4))))["ids"]
        seen = await s.events(3, 10)
        assert [(e.id, e.json()["n"]) for e in seen] == list(zip(ids, [1, 2, 3], strict=True))
    missed = (await post(gw_a, batch(range(4, 7))))["ids"]
    last_id = seen[-1].id
    assert last_id is not None
    async with open_stream(gw_b.stream_url(shop), {"Last-Event-ID": last_id}) as s:
        await connected(s)
        replayed = await s.events(3, 10)
        assert [(e.id, e.json()["n"]) for e in replayed] == list(
            zip(missed, [4, 5, 6], strict=True)), replayed
        live = (await post(gw_b, batch(range(7, 8))))["ids"]
        ev = await s.next_event(10)
        assert (ev.event, ev.id, ev.json()["n"]) == ("stage", live[0], 7), ev


def test_check_config_requires_the_hash_tag_in_cluster_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env.update(REDIS_URL="redis://127.0.0.1:1", DATABASE_URL="postgresql://gw@127.0.0.1:1/gw")

    def check(redis_cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump({"redis": redis_cfg}))
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
        )

    bad = check({"cluster": True, "channel": "merchant:{merchant_id}:{event}"})
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "redis.channel" in bad.stderr
    good = check({"cluster": True})
    assert good.returncode == 0, good.stderr
    assert yaml.safe_load(good.stdout)["redis"]["channel"] == "merchant:{{{merchant_id}}}:{event}"
