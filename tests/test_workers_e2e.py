"""`server.workers: 2`: a supervisor and two worker processes sharing the port.

Each worker holds its own shared Redis subscription per merchant; a publish
reaches streams held by both; /metrics (prometheus-client multiprocess mode)
reports the total across workers; SIGTERM to the supervisor drains both, and so
does its death by SIGKILL. A durable Last-Event-ID is replayed from Redis by the
worker that never held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from ops_support import get_metrics, metric, poll
from support import Event, SSEStream, http_json, open_stream, publish, wait_for

STREAMS = 20
KEY = "workers-e2e-publish-key-4b7e1d"


async def test_two_workers_share_port_fan_out_metrics_and_drain(
    gateway_factory, redis_server, merchant
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart(
        config={"server": {"workers": 2, "shutdown_timeout": 3}, "sse": {"linger": 1}}
    )
    # ready once both workers listen (tools/gateway.py: wait_ready)
    url = gw.stream_url(shop)
    channel = f"merchant:{mid}:progress"
    rds = aioredis.Redis.from_url(redis_server.url)

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(contextlib.aclosing(rds))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
            )
        )
        # Each connection has its own source port; SO_REUSEPORT spreads them
        # over both workers (all 20 on one worker: probability 2 * 2**-20).
        streams: list[SSEStream] = list(
            await asyncio.gather(
                *(
                    stack.enter_async_context(open_stream(url, session=session))
                    for _ in range(STREAMS)
                )
            )
        )
        assert all(s.status == 200 for s in streams)
        for s in streams:
            assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid

        # One subscription per worker for this merchant, whatever the number
        # of streams: both workers hold some of the 20.
        numsub = dict(await rds.pubsub_numsub(channel))
        assert numsub[channel.encode()] == 2, numsub

        receivers = await publish(redis_server.url, channel, {"jobId": "w", "percent": 5})
        assert receivers == 2
        got = await asyncio.gather(*(s.next_event(timeout=5) for s in streams))
        assert {(e.event, e.data) for e in got} == {("progress", '{"jobId": "w", "percent": 5}')}
        assert len({e.id for e in got}) <= 2  # ids are per process

        # /metrics on whichever worker answers reports the sum (workers sync ~1 s)
        async def total_connections() -> bool:
            for _ in range(4):  # several scrapes land on both workers
                if metric(await get_metrics(gw), "gateway_connections") != STREAMS:
                    return False
            return True

        await wait_for(total_connections, timeout=10, message="(gateway_connections == 20)")
        samples = await get_metrics(gw)
        delivered = metric(samples, "gateway_events_delivered_total")
        assert delivered >= STREAMS, samples

        # SIGTERM to the supervisor: every stream, on both workers, is told
        # to reconnect elsewhere and closed; the supervisor exits 0.
        gw.send_signal(signal.SIGTERM)
        shutdowns = await asyncio.gather(
            *(s.next_event_of("shutdown", timeout=10) for s in streams)
        )
        assert all(ev.json() == {"reason": "shutdown"} for ev in shutdowns)
        assert all(ev.retry is not None for ev in shutdowns)
        await asyncio.gather(*(s.wait_closed(timeout=10) for s in streams))
        assert await asyncio.to_thread(gw.wait, 10) == 0
        assert len(re.findall(r"stream open ", gw.log_text())) == STREAMS


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may take its time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    gateway_factory, merchant
) -> None:
    """SIGKILL to the supervisor (the OOM killer, say) cannot be forwarded; the
    kernel tells each worker instead, which drains its streams and exits: no
    orphan keeps the port."""
    mid, shop = merchant
    gw = await gateway_factory.astart(config={"server": {"workers": 2, "shutdown_timeout": 3}})
    workers = _children(gw.pid)
    assert len(workers) == 2, workers
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
            gw.send_signal(signal.SIGKILL)
            event = await s.next_event_of("shutdown", timeout=10)
            assert event.json() == {"reason": "shutdown"}
        await wait_for(
            lambda: not any(_running(pid) for pid in workers), timeout=10,
            message=f"(workers {workers} exit after their supervisor)",
        )
    finally:  # on failure, stop the orphans this test made
        for pid in filter(_running, workers):
            os.kill(pid, signal.SIGKILL)


async def test_durable_id_replayed_from_redis_by_the_other_worker(
    gateway_factory, redis_server, merchant
) -> None:
    """A client saw a durable event on one worker; events are published while it is
    away; it reconnects (Last-Event-ID) to the other worker, which never held the
    merchant: it gets exactly the missed events, read from Redis (/metrics says so)."""
    mid, shop = merchant
    gw = await gateway_factory.astart(
        config={"server": {"workers": 2}, "auth": {"publish_key": KEY}}
    )
    url = gw.stream_url(shop)

    async def publish_durably(items: list[dict[str, str]]) -> list[str]:
        body = [{"merchantId": mid, **item} for item in items]
        status, _, reply = await http_json(
            gw.url(f"{gw.path}/publish"), "POST", {"Authorization": f"Bearer {KEY}"},
            json_body=body,
        )
        assert status == 200, reply
        return list(reply["ids"])

    async def until_probe(s: SSEStream, marker: str) -> list[Event]:
        """Publish a plain `stage` marker; every event up to and including it. The
        marker's process-local id (`PREFIX-N`) tells which worker holds the stream."""
        assert await publish(redis_server.url, f"merchant:{mid}:stage", marker) >= 1
        got = [await s.next_event(timeout=5)]
        while got[-1].data != marker:
            got.append(await s.next_event(timeout=5))
        return got

    def worker(plain_id: str | None) -> str:
        assert plain_id and ":" not in plain_id, plain_id  # a plain id, not a durable one
        return plain_id.rsplit("-", 1)[0]

    # The first session: on worker X, it sees d1 and leaves. X keeps the merchant
    # (sse.linger, 30 s) and takes d2..d4 into its ring; the other worker never holds it.
    async with open_stream(url) as s:
        assert s.status == 200
        await s.next_event_of("connected", timeout=10)
        x = worker((await until_probe(s, "where"))[-1].id)
        [d1] = await publish_durably([{"event": "progress", "data": '{"jobId":"j","n":1}'}])
        seen = await s.next_event(timeout=5)
        assert (seen.id, seen.event) == (d1, "progress")
    missed = [
        {"event": "progress", "data": '{"jobId":"j","n":2}'},
        {"event": "stage", "data": "packing"},
        {"event": "completion", "data": '{"jobId":"j"}'},
    ]
    missed_ids = await publish_durably(missed)
    expected = [(i, m["event"], m["data"]) for i, m in zip(missed_ids, missed, strict=True)]

    # Reconnect until SO_REUSEPORT hands the connection to the other worker
    # (each try is a new source port: 20 tries all on X has probability 2**-20).
    # Tries that land on X replay from its ring and are not what this test is about.
    for attempt in range(20):
        async with open_stream(url, headers={"Last-Event-ID": d1}) as s:
            assert s.status == 200
            await s.next_event_of("connected", timeout=10)
            got = await until_probe(s, f"probe-{attempt}")
        if worker(got[-1].id) != x:
            print(f"reached the other worker on try {attempt + 1}")
            break
    else:
        raise AssertionError("20 reconnects all reached the worker that delivered d1")
    assert [(e.id, e.event, e.data) for e in got[:-1]] == expected, got

    # summed over both workers (prometheus multiprocess mode; workers sync ~1 s)
    async def replay_counts() -> tuple[float, float]:
        samples = await get_metrics(gw)
        return (
            metric(samples, "gateway_replayed_events_total", source="redis"),
            metric(samples, "gateway_history_reads_total"),
        )

    (from_redis, reads), _ = await poll(
        replay_counts, lambda c: c[0] >= len(missed) and c[1] > 0, 10,
        what="replayed_events{source=redis} and history_reads counted",
    )
    assert from_redis == len(missed) and reads >= 1
