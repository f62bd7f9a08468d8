"""End to end (real gateways, Redis, PostgreSQL): durable publishing and global replay.

The HTTP publish API and the CLI against a running gateway; a client that
leaves one gateway process and reconnects to another (or to a restarted one)
with its durable Last-Event-ID; clients reconnecting again and again to a
2-worker gateway while 500 durable events are published.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from ops_support import get_metrics, metric, poll
from support import Event, SSEStream, http_json, open_stream, publish, wait_for

from gateway.durable.ids import DurableId, history_keys
from gateway.durable.publisher import AsyncPublisher
from tools.services import RedisServer

pytestmark = pytest.mark.timeout(90)

KEY = "e2e-publish-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
DURABLE = {"auth": {"publish_key": KEY}, "sse": {"history": 1000}, "redis": {"history_ttl": 600}}
REPO_ROOT = Path(__file__).resolve().parent.parent


async def connected(s: SSEStream) -> None:
    if s.status != 200:
        raise AssertionError(f"status {s.status}: {await s.json_body()}")
    ev = await s.next_event(10)
    assert ev.event == "connected", ev


async def post(gw: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http_json(
        gw.url(f"{gw.path}/publish"), "POST", AUTH if headers is None else headers,
        data=io.BytesIO(data),
    )


async def publish_durably(gw: Any, merchant_id: str, data: str) -> str:
    """A `stage` event through the publish API; its durable id."""
    status, _, reply = await post(gw, {"merchantId": merchant_id, "event": "stage", "data": data})
    assert status == 200, reply
    return str(reply["id"])


def offset(ev: Event) -> int:
    parsed = DurableId.parse(ev.id)
    assert parsed is not None, f"not a durable id: {ev}"
    return parsed.offset


async def test_publish_api_disabled_without_key(gateway_factory: Any, merchant: Any) -> None:
    gw = gateway_factory.start()
    status, _, body = await post(gw, {"merchantId": merchant[0], "event": "progress", "data": 1})
    assert (status, body["error"]) == (404, "not_found")


async def test_publish_api_end_to_end(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    gw = gateway_factory.start(config=DURABLE)
    mid, shop = merchant
    one = {"merchantId": mid, "event": "progress", "data": {"jobId": "po-42", "percent": 40}}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, _, body = await post(gw, one, headers)
        assert (status, body["error"]) == (401, "invalid_token")
    bad = [
        b"{", [], [one] * 1001, {**one, "x": 1}, {**one, "event": "resync"},
        {**one, "merchantId": "a b"}, {"merchantId": mid, "event": "stage"}, [one, "x"],
    ]
    for body in bad:
        status, _, reply = await post(gw, body)
        assert (status, reply["error"]) == (400, "invalid_request"), (body, reply)
    status, _, reply = await post(gw, b" " * (1024 * 1024 + 1))
    assert (status, reply["error"]) == (413, "too_large")

    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        status, _, reply = await post(gw, one)
        assert status == 200
        ids = [reply["id"]]
        batch = [
            {"merchantId": mid, "event": "stage", "data": "packing\nline two"},
            {"merchantId": mid, "event": "completion", "data": [1, {"a": None}]},
        ]
        status, _, reply = await post(gw, batch)
        assert status == 200
        ids += reply["ids"]
        got = await s.events(3, 10)  # the 400s published nothing: these come first
    assert [e.id for e in got] == ids
    assert [offset(e) for e in got] == [1, 2, 3]
    assert [(e.event, e.data) for e in got] == [
        ("progress", '{"jobId":"po-42","percent":40}'),
        ("stage", "packing\nline two"),
        ("completion", '[1,{"a":null}]'),
    ]
    assert KEY not in gw.log_text()
    redis = aioredis.Redis.from_url(redis_server.url)
    try:  # redis.history_ttl and sse.history reached the script
        for key in history_keys(mid):
            assert 590 <= await redis.ttl(key) <= 600
        assert await redis.xlen(history_keys(mid)[0]) == 3
    finally:
        await redis.aclose()
    expected = {"401": 2, "400": len(bad), "413": 1, "200": 2}

    def counted(samples: dict[str, float]) -> bool:
        return all(
            metric(samples, "gateway_publish_requests_total", status=status) == n
            for status, n in expected.items()
        )

    await poll(lambda: get_metrics(gw), counted, 5, what="publish requests counted by status")


async def test_publish_api_503_while_redis_is_down(
    gateway_factory: Any, redis_factory: Any, merchant: Any
) -> None:
    own = redis_factory()
    gw = gateway_factory.start(config=DURABLE, redis=own)
    one = {"merchantId": merchant[0], "event": "progress", "data": {}}
    status, _, _ = await post(gw, one)
    assert status == 200
    own.kill()
    status, headers, body = await post(gw, one)
    assert (status, body["error"]) == (503, "unavailable")
    assert int(headers["Retry-After"]) >= 1


async def test_cli_publish(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    gw = gateway_factory.start(config=DURABLE)
    mid, shop = merchant
    env = {**gw.env}
    argv = [sys.executable, "-m", "gateway", "publish"]
    config = ["--config", str(gw.config_path)]
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        done = await asyncio.to_thread(
            subprocess.run, [*argv, mid, "stage", '{"jobId": "j1"}', *config],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        ev = await s.next_event(10)
    assert (ev.id, ev.event, ev.data) == (done.stdout.strip(), "stage", '{"jobId":"j1"}')
    bad = await asyncio.to_thread(
        subprocess.run, [*argv, mid, "resync", "x", *config],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    down = {**env, "REDIS_URL": "redis://:sekret-pw@127.0.0.1:1/0"}
    failed = await asyncio.to_thread(
        subprocess.run, [*argv, mid, "stage", "x", *config],
        cwd=REPO_ROOT, env=down, capture_output=True, text=True, timeout=30,
    )
    assert failed.returncode == 1 and "sekret-pw" not in failed.stderr


async def test_replay_across_processes_and_restarts(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    a = gateway_factory.start(config=DURABLE)
    b = gateway_factory.start(config=DURABLE)
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = AsyncPublisher(client, history=1000, ttl_s=600)
    try:
        async with open_stream(a.stream_url(shop)) as s:
            await connected(s)
            for n in range(1, 4):
                await publisher.publish(mid, "stage", {"n": n})
            got = await s.events(3, 10)
        assert [offset(e) for e in got] == [1, 2, 3]
        for n in range(4, 7):  # while the client is away
            await publisher.publish(mid, "stage", {"n": n})
        headers = {"Last-Event-ID": got[-1].id or ""}
        async with open_stream(b.stream_url(shop), headers=headers) as s:
            await connected(s)
            replay = await s.events(3, 10)
            await publisher.publish(mid, "stage", {"n": 7})
            live = await s.next_event(10)
        assert [(e.event, e.json()["n"]) for e in replay] == [("stage", n) for n in (4, 5, 6)]
        assert offset(live) == 7 and live.json() == {"n": 7}

        a.stop()
        a2 = gateway_factory.start(config=DURABLE)  # the same deployment, a new process
        for n in range(8, 10):
            await publisher.publish(mid, "stage", {"n": n})
        async with open_stream(a2.stream_url(shop), headers={"Last-Event-ID": live.id or ""}) as s:
            await connected(s)
            replay = await s.events(2, 10)
            await publish(redis_server.url, f"merchant:{mid}:stage", {"n": 10})  # plain, live
            plain = await s.next_event(10)
        assert [offset(e) for e in replay] == [8, 9]
        assert plain.json() == {"n": 10} and DurableId.parse(plain.id) is None

        epoch = DurableId.parse(live.id)
        assert epoch is not None
        stale = f"{'0' if epoch.epoch != '0' else '1'}:3"
        async with open_stream(b.stream_url(shop), headers={"Last-Event-ID": stale}) as s:
            await connected(s)
            ev = await s.next_event(10)
        assert (ev.event, ev.json()) == ("resync", {"reason": "history_gap"})
    finally:
        await client.aclose()


async def test_workers_concurrent_publisher_and_reconnecting_clients(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    # linger 0: a worker whose last stream of the merchant closes drops its ring at once,
    # so reconnects there are served from Redis while events keep arriving
    config = {**DURABLE, "server": {"workers": 2}, "sse": {"history": 1000, "linger": 0}}
    gw = gateway_factory.start(config=config)
    total, clients = 500, 4
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = AsyncPublisher(client, history=1000, ttl_s=600)
    rng = random.Random(7)

    async def publish_all() -> None:
        for n in range(1, total + 1):
            await publisher.publish(mid, "progress", {"jobId": f"j{n}", "n": n})
            if n % 10 == 0:
                await asyncio.sleep(0.02)

    ready = [asyncio.Event() for _ in range(clients)]

    async def follow(k: int) -> tuple[list[int], int, int]:
        seen: list[int] = []
        last: str | None = None
        sessions = 0
        deadline = time.monotonic() + 60
        while (not seen or seen[-1] < total) and time.monotonic() < deadline:
            sessions += 1
            headers = {"Last-Event-ID": last} if last else {}
            async with open_stream(gw.stream_url(shop), headers=headers) as s:
                await connected(s)
                ready[k].set()
                for _ in range(rng.randint(5, 60)):
                    try:
                        ev = await s.next_event(5)
                    except TimeoutError:
                        break
                    if ev.event == "resync":
                        return seen, sessions, 1
                    seen.append(offset(ev))
                    last = ev.id
                    if seen[-1] == total:
                        break
        return seen, sessions, 0

    try:
        followers = [asyncio.create_task(follow(k)) for k in range(clients)]
        for k, event in enumerate(ready):  # every first session is live before publishing
            await asyncio.wait_for(event.wait(), 15)
            assert not followers[k].done()
        await publish_all()
        results = await asyncio.gather(*followers)
    finally:
        await client.aclose()
    for seen, sessions, resyncs in results:
        assert resyncs == 0 and seen, seen
        assert seen == list(range(seen[0], total + 1)), seen[:20]
        assert seen[0] == 1 and sessions > 2


async def test_trimmed_or_expired_history_gets_history_gap(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    config = {**DURABLE, "sse": {"history": 5}}
    a = gateway_factory.start(config=config)
    b = gateway_factory.start(config=config)
    client = aioredis.Redis.from_url(redis_server.url)

    async def reconnect(last_id: str, gateway: Any = b) -> list[Event]:
        async with open_stream(gateway.stream_url(shop), headers={"Last-Event-ID": last_id}) as s:
            await connected(s)
            first = await s.next_event(10)
            if first.event == "resync":
                return [first]
            await publish_durably(a, mid, "marker")  # A: its sse.history caps
            rest: list[Event] = []
            while not rest or rest[-1].data != "marker":
                rest.append(await s.next_event(10))
            return [first, *rest]

    try:
        async with open_stream(a.stream_url(shop)) as s:
            await connected(s)
            ids = [await publish_durably(a, mid, str(n)) for n in range(1, 9)]
            got = await s.events(8, 10)
        assert [e.id for e in got] == ids
        held = await reconnect(ids[2])  # 4..8 are the 5 events still held
        assert [e.data for e in held] == ["4", "5", "6", "7", "8", "marker"]
        trimmed = await reconnect(ids[1])  # 3 was trimmed
        assert [(e.event, e.json()) for e in trimmed] == [("resync", {"reason": "history_gap"})]

        keys = history_keys(mid)
        for key in keys:  # as if redis.history_ttl had passed without a durable publish
            await client.pexpire(key, 1)

        async def expired() -> bool:
            return await client.exists(*keys) == 0

        await wait_for(expired, timeout=5, message="history keys expired")
        gone = await reconnect(ids[-1])
        assert [(e.event, e.json()) for e in gone] == [("resync", {"reason": "history_gap"})]
        # A still holds these events in its ring (and B backfilled its ring from its
        # reads), but Redis no longer holds the history: the ring is only a cache
        for gateway in (a, b):
            gone = await reconnect(ids[-2], gateway)
            assert [(e.event, e.json()) for e in gone] == [("resync", {"reason": "history_gap"})]
    finally:
        await client.aclose()


async def test_the_ring_answers_its_own_ids_without_a_history_read(
    gateway_factory: Any, merchant: Any
) -> None:
    """The in-process ring is the cache in front of the Redis history: a reconnect to
    the process that delivered the id replays from memory (Redis only confirms the
    epoch), and a history read happens only for ids the ring lacks."""
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)

    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        ids = [await publish_durably(gw, mid, str(n)) for n in range(1, 4)]
        assert [e.id for e in await s.events(3, 10)] == ids
    # held: the merchant lingers
    missed = [await publish_durably(gw, mid, str(n)) for n in range(4, 6)]
    before = await get_metrics(gw)
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": ids[-1]}) as s:
        await connected(s)
        assert [e.id for e in await s.events(2, 10)] == missed
    after = await get_metrics(gw)
    for name, labels, grew in (
        ("gateway_replayed_events_total", {"source": "memory"}, 2),
        ("gateway_replayed_events_total", {"source": "redis"}, 0),
        ("gateway_history_reads_total", {}, 0),
    ):
        assert metric(after, name, **labels) - metric(before, name, **labels) == grew, name
