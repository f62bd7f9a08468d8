"""The `snapshot` frame (README "Job state"): on connect, after resync, under a
concurrent publisher, and the same from every process, against real Redis,
PostgreSQL, gateways and nginx."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from ops_support import get_metrics, metric
from rolling_support import upstream_conf
from support import Event, open_stream, wait_for
from support import publish as publish_plain
from test_durable_e2e import AUTH, DURABLE, connected
from test_durable_e2e import post as post_as

from gateway.durable.ids import DurableId, job_state_keys
from gateway.durable.publisher import AsyncPublisher
from tools.services import RedisServer, free_port

pytestmark = pytest.mark.timeout(120)

JSON = {**AUTH, "Content-Type": "application/json"}
STREAM_PATH = "/api/realtime/events"


async def publish(gw: Any, mid: str, event: str, data: Any) -> str:
    status, _, reply = await post_as(gw, {"merchantId": mid, "event": event, "data": data}, JSON)
    assert status == 200, reply
    return str(reply["id"])


def offset(event_id: str) -> int:
    parsed = DurableId.parse(event_id)
    assert parsed is not None, event_id
    return parsed.offset


def foreign(event_id: str) -> str:
    """`event_id` under another epoch: a Last-Event-ID the history cannot replay."""
    return f"{'0' if event_id[0] != '0' else '1'}{event_id[1:]}"


def strict_json(text: str) -> Any:
    """`text` parsed as a browser's JSON.parse would: no NaN, no Infinity."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def snapshot_after_connected(s: Any) -> Event:
    await connected(s)
    frame = await s.next_event(10)
    assert frame.event == "snapshot", frame
    return frame


async def test_a_stream_opened_mid_job_gets_the_state_then_only_newer_events(
    gateway_factory: Any, merchant: Any
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    async with open_stream(gw.stream_url(shop)) as s:  # no job state yet: no frame
        await connected(s)
        plain = await publish(gw, mid, "stage", "no job here")
        assert (await s.next_event(10)).id == plain
    a1 = await publish(gw, mid, "progress", {"jobId": "A", "percent": 10})
    b1 = await publish(gw, mid, "progress", {"jobId": 7, "percent": 50})
    a2 = await publish(gw, mid, "progress", {"jobId": "A", "percent": 40})
    b2 = await publish(gw, mid, "completion", {"jobId": "7"})  # 7 and "7": one job
    head = await publish(gw, mid, "stage", "still no job")
    async with open_stream(gw.stream_url(shop)) as s:
        frame = await snapshot_after_connected(s)
        assert frame.id == head and a1 < a2
        assert frame.json() == {"jobs": [
            {"job": "A", "event": "progress", "id": a2, "data": {"jobId": "A", "percent": 40}},
            {"job": "7", "event": "completion", "id": b2, "data": {"jobId": "7"}},
        ]}, b1
        later = await publish(gw, mid, "progress", {"jobId": "A", "percent": 60})
        assert (await s.next_event(10)).id == later
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": a1}) as s:
        await connected(s)  # a replay brings the client up to date: no snapshot
        # (a2 is skipped by coalescing: `later`, a newer progress of job A, is in the replay)
        assert [e.id for e in await s.events(4, 10)] == [b1, b2, head, later]
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": foreign(head)}) as s:
        await connected(s)
        resync, frame = await s.events(2, 10)
        assert (resync.event, resync.json()) == ("resync", {"reason": "history_gap"})
        assert frame.event == "snapshot" and frame.id == later
        assert [j["id"] for j in frame.json()["jobs"]] == [b2, later]
    assert metric(await get_metrics(gw), "gateway_snapshots_total") == 2


async def test_after_a_history_gap_the_snapshot_is_followed_by_every_newer_event_once(
    gateway_factory: Any, merchant: Any
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    # each progress names its own job: no queued progress may make way for a newer
    # one of its job (sse.coalesce), so every later event must arrive
    jobs = {await publish(gw, mid, "progress", {"jobId": "A", "percent": 10}): "A"}
    head = await publish(gw, mid, "stage", "no job")
    ids = [*jobs, head]

    async def publish_meanwhile() -> None:  # while the stream opens and the state is read
        for n in range(6):
            event_id = await publish(gw, mid, "progress", {"jobId": f"c{n}", "percent": n})
            jobs[event_id] = f"c{n}"
            ids.append(event_id)

    meanwhile = asyncio.create_task(publish_meanwhile())
    try:
        async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": foreign(head)}) as s:
            await connected(s)
            resync, frame = await s.events(2, 10)
            await meanwhile
            assert (resync.event, resync.json()) == ("resync", {"reason": "history_gap"})
            assert frame.event == "snapshot" and frame.id in ids, frame
            seen = DurableId.parse(frame.id)
            assert seen is not None and seen.offset >= offset(head)
            latest = {job: i for i, job in jobs.items() if offset(i) <= seen.offset}
            assert [(j["job"], j["id"]) for j in frame.json()["jobs"]] == sorted(
                latest.items(), key=lambda item: offset(item[1]))
            after = [await publish(gw, mid, "completion", {"jobId": "A"}),
                     await publish(gw, mid, "progress", {"jobId": "d", "percent": 5}),
                     await publish(gw, mid, "stage", "end")]
            expected = [event_id for event_id in ids if offset(event_id) > seen.offset] + after
            got = await s.events(len(expected), 10)
            assert [e.id for e in got] == expected  # each once, in order: `end` comes last
            assert {str(e.id).split(":")[0] for e in got} == {seen.epoch}
            assert [offset(e.id) for e in got] == sorted({offset(e.id) for e in got})
            assert offset(got[0].id) > seen.offset  # each id greater than the snapshot's
    finally:
        meanwhile.cancel()


async def test_after_a_redis_restart_the_resync_is_followed_by_the_state(
    gateway_factory: Any, merchant: Any, redis_factory: Any
) -> None:
    mid, shop = merchant
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    server: RedisServer = redis_factory(extra_args=aof)
    gw = gateway_factory.start(config=DURABLE, redis=server.url)
    job = await publish(gw, mid, "progress", {"jobId": "J", "percent": 30})
    async with open_stream(gw.stream_url(shop)) as s:
        assert (await snapshot_after_connected(s)).id == job
        await asyncio.to_thread(server.restart)  # AOF: the state survives
        resync, frame = await s.events(2, 30)
        assert (resync.event, resync.json()) == ("resync", {"reason": "redis_reconnected"})
        assert frame.event == "snapshot" and frame.id == job, frame
        assert frame.json()["jobs"][0]["data"] == {"jobId": "J", "percent": 30}

        async def answered() -> Any:  # the publish budget may still wait for the link
            status, _, reply = await post_as(
                gw, {"merchantId": mid, "event": "progress", "data": {"jobId": "J"}}, JSON)
            return None if status == 503 else reply

        reply = await wait_for(answered, timeout=20, interval=0.2,
                               message="(a publish after the restart)")
        assert (await s.next_event(10)).id == reply["id"]


async def test_with_sse_snapshot_false_no_frame_on_connect_after_a_gap_or_a_restart(
    gateway_factory: Any, merchant: Any, redis_factory: Any
) -> None:
    mid, shop = merchant
    aof = ["--appendonly", "yes", "--appendfsync", "always"]  # the job state survives
    server: RedisServer = redis_factory(extra_args=aof)
    config = {**DURABLE, "sse": {**DURABLE["sse"], "snapshot": False}}
    gw = gateway_factory.start(config=config, redis=server.url)
    job = await publish(gw, mid, "progress", {"jobId": "J", "percent": 30})  # job state exists
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        marker = await publish(gw, mid, "stage", "after connected")
        assert (await s.next_event(10)).id == marker  # not a snapshot
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": foreign(job)}) as s:
        await connected(s)
        resync = await s.next_event(10)
        assert (resync.event, resync.json()) == ("resync", {"reason": "history_gap"})
        marker = await publish(gw, mid, "stage", "after the gap")
        assert (await s.next_event(10)).id == marker
    assert metric(await get_metrics(gw), "gateway_snapshots_total") == 0
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        await asyncio.to_thread(server.restart)
        resync = await s.next_event(30)
        assert (resync.event, resync.json()) == ("resync", {"reason": "redis_reconnected"})
        body = {"merchantId": mid, "event": "stage", "data": "after the restart",
                "key": "after-the-restart"}  # a retried publish is published once

        async def published() -> str | None:  # the publish budget may still wait for the link
            status, _, reply = await post_as(gw, body, JSON)
            assert status in (200, 503), reply
            return str(reply["id"]) if status == 200 else None

        marker = await wait_for(published, timeout=20, interval=0.2,
                                message="(a publish after the restart)")
        assert (await s.next_event(10)).id == marker  # a snapshot would come first
    assert metric(await get_metrics(gw), "gateway_snapshots_total") == 0


async def test_sse_snapshot_jobs_keeps_only_the_most_recently_updated_jobs(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config={**DURABLE, "sse": {**DURABLE["sse"], "snapshot_jobs": 2}})
    await publish(gw, mid, "progress", {"jobId": "A", "percent": 10})
    b = await publish(gw, mid, "progress", {"jobId": "B", "percent": 10})
    c = await publish(gw, mid, "progress", {"jobId": "C", "percent": 10})
    a = await publish(gw, mid, "progress", {"jobId": "A", "percent": 20})  # A is newer than C
    async with open_stream(gw.stream_url(shop)) as s:
        frame = await snapshot_after_connected(s)
    assert frame.id == a
    assert [(j["job"], j["id"]) for j in frame.json()["jobs"]] == [("C", c), ("A", a)], b
    client = redis.Redis.from_url(redis_server.url)
    try:  # the publish script capped the state in Redis, not the read
        jobs, jobids = job_state_keys(mid)
        assert (client.hlen(jobs), client.zcard(jobids)) == (2, 2)
    finally:
        client.close()


async def test_a_payload_no_browser_can_parse_leaves_the_snapshot_readable(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    """Another publisher (the Python helper with raw bytes, Node's JSON.stringify of a
    lone surrogate) may record a job payload with NaN or a lone surrogate escape. Its
    job is left out of the snapshot; every stream still opens and reads the frame. A
    lone surrogate used to fail every snapshot read (UnicodeEncodeError), so no new
    stream of the merchant got past its headers; NaN made the frame unparseable. And
    a state still over a lowered `sse.snapshot_jobs` shows only the newest jobs."""
    mid, shop = merchant
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        publisher = AsyncPublisher(client)
        ok = await publisher.send((mid, "progress", b'{"jobId":"ok","percent":1}'))
        await publisher.send((mid, "progress", b'{"jobId":"nan","percent":NaN}'))
        await publisher.send((mid, "progress", b'{"jobId":"surrogate","note":"\\ud800"}'))
        newest = await publisher.send((mid, "progress", b'{"jobId":"ok2","percent":2}'))
    finally:
        await client.aclose()
    gw = gateway_factory.start(config=DURABLE)
    async with open_stream(gw.stream_url(shop)) as s:
        frame = await snapshot_after_connected(s)
    assert frame.id == newest.id
    assert [j["job"] for j in strict_json(frame.data)["jobs"]] == ["ok", "ok2"], ok
    gw = gateway_factory.start(config={**DURABLE, "sse": {**DURABLE["sse"], "snapshot_jobs": 1}})
    async with open_stream(gw.stream_url(shop)) as s:  # the state still holds four jobs
        frame = await snapshot_after_connected(s)
    assert [j["job"] for j in frame.json()["jobs"]] == ["ok2"]


async def test_streams_opening_under_a_publisher_see_state_then_every_later_event_once(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    # no coalescing: a stream queues what arrives while its snapshot is read, and a
    # queued progress may make way for a newer one of its job (sse.coalesce, allowed
    # by the contract); here every later event must arrive, each once
    config = {**DURABLE, "sse": {**DURABLE["sse"], "coalesce": []}}
    gw = gateway_factory.start(config=config)
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = AsyncPublisher(client, history=1000, ttl_s=600)
    total, jobs = 400, 12
    published: list[tuple[str, str, dict[str, Any]]] = []  # (id, event, data) in order
    rng = random.Random(19)

    async def publish_all() -> None:
        for n in range(1, total + 1):
            data = {"jobId": f"j{n % jobs}", "n": n}
            event = "completion" if n > total - jobs else "progress"
            event_id = await publisher.publish(mid, event, data)
            assert event_id is not None
            published.append((event_id, event, data))
            async with progress:
                progress.notify_all()

    opened: list[asyncio.Event] = []
    progress = asyncio.Condition()  # notified at each publish

    async def follow(at: int) -> tuple[Event, list[Event]]:
        here = asyncio.Event()
        opened.append(here)
        async with progress:  # open once `at` events are out: every moment of the run
            await progress.wait_for(lambda: len(published) >= at)
        async with open_stream(gw.stream_url(shop)) as s:
            await connected(s)
            here.set()
            frame = await s.next_event(15)
            events: list[Event] = []
            while not events or events[-1].data != "end":
                events.append(await s.next_event(15))
            return frame, events[:-1]

    try:
        await publish(gw, mid, "progress", {"jobId": "j0", "n": 0})  # state exists from the start
        moments = sorted(rng.randrange(total) for _ in range(24))
        followers = [asyncio.create_task(follow(at)) for at in moments]
        await publish_all()
        await asyncio.wait_for(asyncio.gather(*(here.wait() for here in opened)), 30)
        await publisher.publish(mid, "stage", "end")
        results = await asyncio.gather(*followers)
    finally:
        await client.aclose()
    by_id = {event_id: (event, data) for event_id, event, data in published}
    for frame, events in results:
        assert frame.event == "snapshot", frame
        seen = offset(frame.id)
        expected: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for event_id, event, data in published:
            if offset(event_id) <= seen:
                expected[data["jobId"]] = (event_id, event, data)
        got = {j["job"]: (j["id"], j["event"], j["data"]) for j in frame.json()["jobs"]}
        if seen > offset(published[0][0]):
            assert got == {job: v for job, v in expected.items()}, frame.id
        later = [e for e in published if offset(e[0]) > seen]
        assert [e.id for e in events] == [event_id for event_id, _, _ in later], frame.id
        assert all(by_id[e.id][0] == e.event for e in events)
    assert sum(1 for _, events in results if events) >= 12  # most opened mid-run


async def test_every_process_serves_the_same_snapshot(
    gateway_factory: Any, nginx_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    pair = gateway_factory.start(config={**DURABLE, "server": {"workers": 2}})
    other = gateway_factory.start(config=DURABLE)
    # both workers listen: the factory waits for each one's line (tools/gateway.py)
    for n in range(5):
        await publish(pair, mid, "progress", {"jobId": f"j{n % 3}", "percent": n * 10})
    port = free_port()
    nginx = nginx_factory(upstream_conf(port, [pair.port, other.port]), port=port)
    frames: list[Event] = []

    async def served_by(url: str) -> str:
        """Compare one more snapshot; the process that served it: a plain marker's
        process-local id (`PREFIX-N`) names it."""
        async with open_stream(url) as s:
            frames.append(await snapshot_after_connected(s))
            marker = f"where-{len(frames)}"
            assert await publish_plain(redis_server.url, f"merchant:{mid}:stage", marker) >= 1
            probe = await s.next_event(10)
            while probe.data != marker:  # an earlier marker this process got late
                assert probe.event == "stage" and probe.data.startswith("where-"), probe
                probe = await s.next_event(10)
            assert probe.id and ":" not in probe.id, probe
            return probe.id.rsplit("-", 1)[0]

    workers: list[str] = []
    for _ in range(20):  # workers: 2 share one port: each connect's new source port picks
        workers.append(await served_by(pair.stream_url(shop)))  # one (20 on one: 2**-19)
        if len(workers) >= 4 and len(set(workers)) == 2:
            break
    assert len(set(workers)) == 2, workers  # both workers served some of the connects
    others = {await served_by(other.stream_url(shop)) for _ in range(4)}
    proxied = {await served_by(f"http://127.0.0.1:{nginx.port}{STREAM_PATH}?shop={shop}")
               for _ in range(4)}
    assert len(others) == 1 and not others & set(workers), (others, workers)
    assert proxied <= others | set(workers), proxied
    assert len({(f.id, json.dumps(f.json(), sort_keys=True)) for f in frames}) == 1, frames
