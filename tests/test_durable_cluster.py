"""The publish script and DurableHistory on a real 3-primary Redis Cluster (sharded pub/sub)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from support import unique_merchant, wait_until

from gateway.config import load_config
from gateway.durable.cli import run_publish
from gateway.durable.history import DurableHistory
from gateway.durable.ids import (
    DurableId,
    encode_envelope,
    history_keys,
    idempotency_key,
    job_state_keys,
)
from gateway.durable.publisher import SCRIPT_SHA, Outcome, Publication, Publisher
from tools.cluster import cluster_port
from tools.services import RedisServer

pytestmark = [
    pytest.mark.timeout(60),
]

CHANNEL = "merchant:{{{merchant_id}}}:{event}"  # the hash tag that keeps a merchant in one slot


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    """Three primaries, no replicas, all slots assigned; shared by this module's tests."""
    args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000")
    nodes: list[RedisServer] = []
    try:
        for _ in range(3):
            nodes.append(RedisServer(port=cluster_port(), extra_args=args).start())
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )

        def ready() -> bool:
            for node in nodes:
                with redis.Redis(port=node.port) as c:
                    info = c.cluster("info")
                if info.get("cluster_state") != "ok" or int(info["cluster_known_nodes"]) != 3:
                    return False
            return True

        wait_until(ready, timeout=20, message="cluster_state:ok on every node")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def client(cluster: list[RedisServer]) -> AsyncIterator[AsyncRedisCluster]:
    c = AsyncRedisCluster(host="127.0.0.1", port=cluster[0].port)
    await c.initialize()
    yield c
    await c.aclose()


def spread_merchants(client: Any, n: int) -> list[str]:
    """`n` merchants whose keys live on at least two different primaries."""
    mids = [unique_merchant("cl")[0] for _ in range(n)]
    slots = {client.keyslot(history_keys(m)[0]) for m in mids}
    assert len(slots) > 1
    return mids


async def test_sharded_publish_and_replay_on_a_cluster(client: AsyncRedisCluster) -> None:
    history = DurableHistory(client, channel=CHANNEL, history=3, ttl_s=60, sharded=True)
    mids = spread_merchants(client, 6)
    for mid in mids:
        stream, meta = history_keys(mid)
        channel = CHANNEL.format(merchant_id=mid, event="progress")
        assert client.keyslot(stream) == client.keyslot(meta) == client.keyslot(channel)
    pubsub = client.pubsub()
    await pubsub.ssubscribe(CHANNEL.format(merchant_id=mids[0], event="progress"))
    try:
        ids = [await history.publish(mids[0], "progress", b"p%d" % i) for i in range(1, 6)]
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None and msg["type"] == "smessage":
                got.append(msg["data"])
    finally:
        await pubsub.aclose()
    assert got == [encode_envelope(i, b"p%d" % n) for n, i in enumerate(ids, 1)]
    last = DurableId.parse(ids[-1])
    assert last is not None and last.offset == 5
    held = await history.read_all(mids[0])  # one read of the whole history, as the gateway
    replay = held.after(DurableId(last.epoch, 2))
    assert replay is not None and [ev.payload for ev in replay] == [b"p3", b"p4", b"p5"]
    assert held.after(DurableId(last.epoch, 1)) is None

    await client.script_flush()
    assert await client.script_exists(SCRIPT_SHA) == [False]  # on every primary
    batch = [(mid, "stage", b"b") for mid in mids for _ in range(2)]
    batch_ids = [o.id for o in await history.publish_many(batch)]
    offsets = [DurableId.parse(i).offset for i in batch_ids]  # type: ignore[union-attr]
    assert offsets[:2] == [6, 7] and offsets[2:] == [1, 2] * 5


def test_sync_publisher_on_a_cluster(cluster: list[RedisServer]) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster[1].port)
    try:
        publisher = Publisher(client, channel=CHANNEL, sharded=True)
        mids = spread_merchants(client, 4)
        client.script_flush()
        assert client.script_exists(SCRIPT_SHA) == [False]
        ids = [publisher.publish(mid, "error", {"jobId": "j"}) for mid in mids]
        entries = [client.xrange(history_keys(mid)[0]) for mid in mids]
    finally:
        client.close()
    assert [DurableId.parse(i).offset for i in ids] == [1] * 4  # type: ignore[union-attr]
    assert all(e == [(b"0-1", {b"e": b"error", b"d": b'{"jobId":"j"}'})] for e in entries)


def test_cli_publishes_sharded_on_a_cluster(
    cluster: list[RedisServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"redis": {"cluster": True}, "sse": {"history": 5}}))
    cfg = load_config(
        str(path),
        {"REDIS_URL": f"redis://127.0.0.1:{cluster[2].port}/0",
         "DATABASE_URL": "postgresql://gw@127.0.0.1:1/gateway"},
    )
    mid = unique_merchant("cl")[0]
    assert run_publish(cfg, mid, "progress", '{"percent": 5}') == 0
    printed = DurableId.parse(capsys.readouterr().out.strip())
    assert printed is not None and printed.offset == 1
    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    try:
        assert client.xrange(history_keys(mid)[0]) == [
            (b"0-1", {b"e": b"progress", b"d": b'{"percent":5}'})
        ]
    finally:
        client.close()


async def test_job_state_stale_and_idempotency_on_a_cluster(client: AsyncRedisCluster) -> None:
    """Every key of a merchant (history, meta, job state, idempotency) in its slot."""
    history = DurableHistory(client, channel=CHANNEL, history=10, ttl_s=60, sharded=True)
    for mid in spread_merchants(client, 3):  # one per primary
        slots = {client.keyslot(k) for k in (*history_keys(mid), *job_state_keys(mid),
                                               idempotency_key(mid, "k"))}
        assert len(slots) == 1
        first, repeat, stale, done = await history.publish_many([
            Publication(mid, "progress", b'{"jobId":"j","p":1}', key="k", seq=3),
            Publication(mid, "progress", b'{"jobId":"j","p":1}', key="k", seq=3),
            Publication(mid, "progress", b'{"jobId":"j","p":0}', seq=2),
            Publication(mid, "completion", b'{"jobId":"j"}'),
        ])
        assert repeat == Outcome(first.id, duplicate=True) and stale == Outcome(None, stale=True)
        head, records = await history.read_jobs(mid)
        assert head is not None and str(head) == done.id
        assert [(r.job, str(r.id), r.ended) for r in records] == [("j", done.id, True)]
