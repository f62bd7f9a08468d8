"""gateway/durable/publisher.py: the sync and asyncio helpers write and publish the same format,
and a running gateway delivers and replays what the sync helper publishes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from support import open_stream, unique_merchant

from gateway.durable.ids import DurableId, encode_envelope, history_keys
from gateway.durable.publisher import SCRIPT_SHA, AsyncPublisher, Publisher
from tools.services import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def received(pubsub: redis.client.PubSub, n: int, within_s: float = 5) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + within_s
    while len(out) < n and time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            out.append(msg["data"])
    return out


async def test_sync_and_async_helpers_agree(redis_server: RedisServer) -> None:
    mid, _ = unique_merchant("ph")
    sync_client = redis.Redis.from_url(redis_server.url)
    async_client = aioredis.Redis.from_url(redis_server.url)
    pubsub = sync_client.pubsub()
    pubsub.subscribe(f"merchant:{mid}:progress")
    try:
        sync_client.script_flush()  # both must cope with a server that lacks the script
        first = Publisher(sync_client).publish(mid, "progress", {"jobId": "j", "percent": 1})
        sync_client.script_flush()
        second = await AsyncPublisher(async_client).publish(
            mid, "progress", {"jobId": "j", "percent": 2}
        )
        third = Publisher(sync_client).publish(mid, "progress", "text")
        messages = received(pubsub, 3)
        entries = sync_client.xrange(history_keys(mid)[0])
        ttl = sync_client.ttl(history_keys(mid)[1])
    finally:
        pubsub.close()
        sync_client.close()
        await async_client.aclose()
    ids = [DurableId.parse(i) for i in (first, second, third)]
    assert all(ids) and len({i.epoch for i in ids if i}) == 1
    assert [i.offset for i in ids if i] == [1, 2, 3]
    payloads = [b'{"jobId":"j","percent":1}', b'{"jobId":"j","percent":2}', b"text"]
    sent = zip((first, second, third), payloads, strict=True)
    assert messages == [encode_envelope(i, p) for i, p in sent]
    assert [e[1][b"d"] for e in entries] == payloads
    assert 86390 <= ttl <= 86400  # the gateway's default redis.history_ttl


async def test_sync_helper_through_a_running_gateway(
    gateway_factory, redis_server: RedisServer, merchant: tuple[str, str]
) -> None:
    """A stream gets each event with exactly the id the helper returned; another
    gateway process replays the helper's history after a durable Last-Event-ID."""
    mid, shop = merchant
    gw = await gateway_factory.astart()
    client = redis.Redis.from_url(redis_server.url)
    publisher = Publisher(client)
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            assert s.status == 200
            assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
            first = await asyncio.to_thread(
                publisher.publish, mid, "progress", {"jobId": "po-42", "percent": 40}
            )
            second = await asyncio.to_thread(publisher.publish, mid, "stage", "packing")
            live = await s.events(2, timeout=5)
        other = await gateway_factory.astart()
        async with open_stream(other.stream_url(shop), headers={"Last-Event-ID": first}) as s:
            assert s.status == 200
            await s.next_event_of("connected", timeout=10)
            replayed = await s.next_event(timeout=5)
    finally:
        client.close()
    assert [(e.id, e.event, e.data) for e in live] == [
        (first, "progress", '{"jobId":"po-42","percent":40}'),
        (second, "stage", "packing"),
    ]
    assert (replayed.id, replayed.event, replayed.data) == (second, "stage", "packing")


def test_settings_are_passed_through(redis_server: RedisServer) -> None:
    mid, _ = unique_merchant("ph")
    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub()
    pubsub.subscribe(f"custom.{mid}.error")
    try:
        publisher = Publisher(client, channel="custom.{merchant_id}.{event}", history=2, ttl_s=30)
        ids = [publisher.publish(mid, "error", n) for n in range(4)]
        assert len(received(pubsub, 4)) == 4
        assert client.xlen(history_keys(mid)[0]) == 2
        assert 20 <= client.ttl(history_keys(mid)[0]) <= 30
        assert client.script_exists(SCRIPT_SHA) == [True]
    finally:
        pubsub.close()
        client.close()
    assert [DurableId.parse(i).offset for i in ids] == [1, 2, 3, 4]  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs", [{"history": -1}, {"ttl_s": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Publisher(object(), **kwargs)  # type: ignore[arg-type]


def test_the_helper_loads_without_the_rest_of_the_gateway() -> None:
    """docs/publishing.md: backends may copy durable/publisher.py, ids.py, jobs.py and
    publish.lua alone."""
    alone = ("('gateway.durable', 'gateway.durable.publisher', 'gateway.durable.ids', "
             "'gateway.durable.jobs')")
    probe = (
        "import sys, gateway.durable.publisher; "
        "extra = sorted(m for m in sys.modules if m.startswith(('gateway.', 'aiohttp')) "
        f"and m not in {alone}); print(extra)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=30, check=True,
    )
    assert done.stdout.strip() == "[]"
