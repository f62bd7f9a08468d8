# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""End to end on a real local Redis Cluster (3 primaries + 3 replicas, tools/cluster.py).

`redis.cluster: true`: sharded pub/sub (SSUBSCRIBE on the primary owning each
merchant's slot), one pub/sub connection per primary per process, slot moves
and failovers followed with `resync` only for the merchants affected, /health
over every primary, durable publishing and replay on the cluster. One cluster
for the module; every test uses its own merchants and gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cluster_support import (
    channel,
    gateway_pubsub_clients,
    seed_spread,
    shard_numsub,
    spublish,
    spublish_to,
)
from ops_support import get_health, poll
from support import ISOLATED_ENV, Event, SSEStream, http_json, open_stream, wait_for

from gateway.durable import DurableId
from tools.cluster import RedisCluster, slot_of

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed"),
]

KEY = "cluster-e2e-publish-key-3b8d1e"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = {"redis": {"cluster": True, "history_ttl": 600}, "auth": {"publish_key": KEY}}
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One 3-primary, 3-replica cluster for the module, stopped by PID at the end."""
    with RedisCluster() as c:
        yield c


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        auto_decompress=False,
    ) as s:
        yield s


async def connected(s: SSEStream) -> None:
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
    return [(e.event, e.json().get("m") if e.data.startswith("{") else e.data) for e in events]


async def test_sixty_merchants_get_their_own_events_only(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    spread = seed_spread(cluster, postgres_server, 20)
    merchants = [m for ms in spread.values() for m in ms]
    gw = await gateway_factory.astart(config=CONFIG, redis=cluster.url)
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
    gw = await gateway_factory.astart(config=CONFIG, redis=cluster.url)
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
    spread = seed_spread(cluster, postgres_server, 2, prefix="mv")
    ports = list(spread)
    (moving, moving_shop), (same_node, same_shop) = spread[ports[0]]
    (other, other_shop), _ = spread[ports[1]]
    slot = slot_of(channel(moving))
    assert slot != slot_of(channel(same_node))
    gw = await gateway_factory.astart(config=CONFIG, redis=cluster.url)
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


async def test_primary_failover_resyncs_only_its_merchants(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    seed = int(cluster.url.rsplit(":", 1)[1])
    victim = next(n.port for n in cluster.primaries() if n.port != seed)
    spread = seed_spread(cluster, postgres_server, 2, prefix="fo")
    hit = spread[victim]
    spared = [m for port, ms in spread.items() if port != victim for m in ms]
    gw = await gateway_factory.astart(config=CONFIG, redis=cluster.url)
    sent: dict[str, list[int]] = {mid: [] for mid, _ in spared}
    stop = asyncio.Event()

    async def publisher() -> None:  # plain SPUBLISH to the survivors throughout
        owners = {mid: cluster.primary_for(channel(mid)).port for mid in sent}
        for seq in range(1, 2000):
            if stop.is_set():
                return
            for mid in sent:
                got = await spublish_to(owners[mid], channel(mid, "stage"), {"m": mid, "n": seq})
                assert got == 1, f"SPUBLISH to {mid} (seq {seq}) reached {got} subscribers"
                sent[mid].append(seq)
            await asyncio.sleep(0.02)

    async with session() as http, contextlib.AsyncExitStack() as stack:
        streams = {mid: await stack.enter_async_context(open_stream(gw.stream_url(shop),
                                                                    session=http))
                   for mid, shop in hit + spared}
        await asyncio.gather(*(connected(s) for s in streams.values()))
        await subscribed(cluster, list(streams), gw)
        await poll(lambda: get_health(gw), lambda r: r[0] == 200, 10, what="/health 200")
        task = asyncio.create_task(publisher())
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cluster.kill_primary, victim)
            (_, body, _), _ = await poll(lambda: get_health(gw), lambda r: r[0] == 503, 10,
                                         0.02, "/health 503 while a primary is down")
            assert body["status"] == "fail", body
            await asyncio.to_thread(cluster.wait_failover, victim, 20)
            await poll(lambda: get_health(gw), lambda r: r[0] == 200, 20,
                       what="/health 200 after the replica's promotion")
            for mid, _ in hit:
                ev = await streams[mid].next_event(15)
                assert (ev.event, ev.json()) == ("resync", {"reason": "redis_reconnected"}), ev
            await subscribed(cluster, [m for m, _ in hit], gw)
            for mid, _ in hit:
                assert await spublish(cluster, channel(mid, "stage"), {"m": mid, "n": 0}) == 1
                assert summary([await streams[mid].next_event(5)]) == [("stage", mid)]
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await task
            await asyncio.to_thread(cluster.restart, victim)
        for mid in sent:
            await spublish(cluster, channel(mid, "completion"), {"m": mid, "end": True})
            events = await until(streams[mid], is_end)
            assert not [e for e in events if e.event == "resync"], events
            assert [e.json()["n"] for e in events[:-1]] == sent[mid], (mid, events)


async def test_durable_replay_across_two_gateways_on_a_cluster(
    cluster: RedisCluster, postgres_server: Any, gateway_factory: Any
) -> None:
    spread = seed_spread(cluster, postgres_server, 1, prefix="rp")
    mid, shop = next(iter(spread.values()))[0]
    gw_a = await gateway_factory.astart(config=CONFIG, redis=cluster.url)
    gw_b = await gateway_factory.astart(config=CONFIG, redis=cluster.url)

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
