"""End to end (real gateway, Redis, PostgreSQL): Last-Event-ID replay and resync."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import redis.asyncio as aioredis
from delivery_support import Publisher, metric_value
from support import Event, SSEStream, http_json, open_stream, publish, wait_for

pytestmark = pytest.mark.timeout(60)


def n_of(ev: Event) -> int:
    return int(ev.json()["n"])


def seq_of(event_id: str | None) -> int:
    assert event_id
    return int(event_id.rpartition("-")[2])


async def connected(s: SSEStream) -> None:
    if s.status != 200:
        raise AssertionError(f"status {s.status}: {await s.json_body()}")
    ev = await s.next_event(10)
    assert ev.event == "connected", ev


async def collect(s: SSEStream, count: int, wait: float = 10) -> list[Event]:
    evs = await s.events(count, wait)
    assert all(e.event == "stage" for e in evs), evs
    return evs


async def assert_quiet_until(s: SSEStream, pub: Publisher, n: int) -> Event:
    """Publish a marker `n`: the very next event must be it (nothing extra pending)."""
    await pub.send("stage", {"n": n})
    ev = await s.next_event(10)
    assert ev.event == "stage" and n_of(ev) == n, f"expected live n={n}, got {ev}"
    return ev


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory.start(config={"sse": {"history": 100, "linger": 30}})


@pytest.mark.parametrize("via", ["header", "query"])
async def test_replay_after_last_event_id(gw: Any, merchant: Any, redis_server: Any, via: str):
    mid, shop = merchant
    async with (
        Publisher(redis_server.url, mid) as pub,
        open_stream(gw.stream_url(shop)) as observer,
    ):
        await connected(observer)
        async with open_stream(gw.stream_url(shop)) as first:
            await connected(first)
            for n in range(1, 4):
                await pub.send("stage", {"n": n})
            got = await collect(first, 3)
        assert [n_of(e) for e in got] == [1, 2, 3]
        last_id = got[-1].id
        assert last_id
        # published while the client is away
        for n in range(4, 9):
            await pub.send("stage", {"n": n})
        seen = await collect(observer, 8)  # the gateway has processed all of them
        ids = {n_of(e): e.id for e in seen}

        if via == "header":
            url, headers = gw.stream_url(shop), {"Last-Event-ID": last_id}
        else:
            url, headers = gw.stream_url(shop, lastEventId=last_id), {}
        async with open_stream(url, headers=headers) as again:
            await connected(again)
            replay = await collect(again, 5)
            assert [n_of(e) for e in replay] == [4, 5, 6, 7, 8]
            assert [e.id for e in replay] == [ids[n] for n in range(4, 9)]
            seqs = [seq_of(e.id) for e in replay]
            assert seqs == sorted(set(seqs)) and seqs[0] > seq_of(last_id)
            # then live, with nothing doubled in between
            live = await assert_quiet_until(again, pub, 9)
            assert seq_of(live.id) > seqs[-1]


async def test_reconnect_with_newest_id_replays_nothing_and_goes_live(
    gw: Any, merchant: Any, redis_server: Any
):
    mid, shop = merchant
    async with Publisher(redis_server.url, mid) as pub:
        async with open_stream(gw.stream_url(shop)) as first:
            await connected(first)
            for n in range(1, 4):
                await pub.send("stage", {"n": n})
            got = await collect(first, 3)
        async with open_stream(gw.stream_url(shop), {"Last-Event-ID": got[-1].id or ""}) as s:
            await connected(s)
            ev = await assert_quiet_until(s, pub, 4)
            assert seq_of(ev.id) > seq_of(got[-1].id)
            assert s.pending_events() == []


async def test_no_loss_across_replay_live_boundary_under_concurrent_publisher(
    gateway_factory: Any, merchant: Any, redis_server: Any
):
    gw = gateway_factory.start(config={"sse": {"history": 1000}})
    mid, shop = merchant
    total = 500
    clients = 3
    ready = [asyncio.Event() for _ in range(clients)]
    reconnects = [0] * clients
    results: list[list[Event]] = [[] for _ in range(clients)]

    async def client(i: int) -> None:
        rng = random.Random(i)
        received = results[i]
        last_id: str | None = None
        while not received or n_of(received[-1]) < total:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            async with open_stream(gw.stream_url(shop), headers=headers) as s:
                await connected(s)
                ready[i].set()
                for _ in range(rng.randint(1, 25)):
                    ev = await s.next_event(15)
                    assert ev.event == "stage", f"client {i}: unexpected {ev}"
                    received.append(ev)
                    last_id = ev.id
                    if n_of(ev) == total:
                        break
            reconnects[i] += 1

    async def publisher() -> None:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 15)
        async with Publisher(redis_server.url, mid) as pub:
            for n in range(1, total + 1):
                await pub.send("stage", {"n": n})
                if n % 4 == 0:
                    await asyncio.sleep(0.002)  # pacing, so reconnects interleave

    hits_before = await metric_value(gw.url("/metrics"), "gateway_replay_hits_total")
    await asyncio.wait_for(asyncio.gather(publisher(), *(client(i) for i in range(clients))), 50)
    for i, received in enumerate(results):
        ns = [n_of(e) for e in received]
        assert ns == list(range(1, total + 1)), (
            f"client {i}: missing {sorted(set(range(1, total + 1)) - set(ns))[:20]}, "
            f"duplicates {[n for n in set(ns) if ns.count(n) > 1][:20]}"
        )
        seqs = [seq_of(e.id) for e in received]
        assert seqs == sorted(set(seqs))
    print(f"reconnects per client: {reconnects}")
    assert min(reconnects) >= 10
    hits = await metric_value(gw.url("/metrics"), "gateway_replay_hits_total")
    assert hits - hits_before >= sum(reconnects) - clients


async def test_resync_for_unknown_id(gw: Any, merchant: Any, redis_server: Any):
    mid, shop = merchant
    async with (
        Publisher(redis_server.url, mid) as pub,
        open_stream(gw.stream_url(shop)) as observer,
    ):
        await connected(observer)
        await pub.send("stage", {"n": 1})
        await collect(observer, 1)
        for headers, query in (
            ({"Last-Event-ID": "no-such-id"}, {}),
            ({}, {"lastEventId": "12345"}),
        ):
            async with open_stream(gw.stream_url(shop, **query), headers=headers) as s:
                await connected(s)
                ev = await s.next_event(10)
                assert ev.event == "resync", ev
                assert ev.json() == {"reason": "history_gap"}
                await assert_quiet_until(s, pub, 2 if headers else 3)
                await collect(observer, 1)


async def test_resync_for_foreign_id(gateway_factory: Any, merchant: Any, redis_server: Any):
    """An id minted by another gateway process is recognised as foreign."""
    gw1 = gateway_factory.start()
    gw2 = gateway_factory.start()
    mid, shop = merchant
    async with (
        Publisher(redis_server.url, mid) as pub,
        open_stream(gw1.stream_url(shop)) as s1,
        open_stream(gw2.stream_url(shop)) as s2,
    ):
        await connected(s1)
        await connected(s2)
        for n in (1, 2):
            await pub.send("stage", {"n": n})
        from1 = await collect(s1, 2)
        from2 = await collect(s2, 2)
        assert from1[0].id != from2[0].id
        # an id from gw1 presented to gw2
        async with open_stream(gw2.stream_url(shop), {"Last-Event-ID": from1[0].id or ""}) as s:
            await connected(s)
            ev = await s.next_event(10)
            assert ev.event == "resync" and ev.json() == {"reason": "history_gap"}, ev
            await assert_quiet_until(s, pub, 3)


async def test_history_size_is_honoured(gateway_factory: Any, merchant: Any, redis_server: Any):
    gw = gateway_factory.start(config={"sse": {"history": 5}})
    mid, shop = merchant
    async with (
        Publisher(redis_server.url, mid) as pub,
        open_stream(gw.stream_url(shop)) as observer,
    ):
        await connected(observer)
        for n in range(1, 11):
            await pub.send("stage", {"n": n})
        seen = await collect(observer, 10)
        ids = {n_of(e): e.id or "" for e in seen}
        # held: 6..10. The oldest held id replays the rest.
        async with open_stream(gw.stream_url(shop), {"Last-Event-ID": ids[6]}) as s:
            await connected(s)
            assert [n_of(e) for e in await collect(s, 4)] == [7, 8, 9, 10]
            await assert_quiet_until(s, pub, 11)
        await collect(observer, 1)
        # now held: 7..11; ids 1..6 are evicted
        for n in (1, 3, 6):
            async with open_stream(gw.stream_url(shop), {"Last-Event-ID": ids[n]}) as s:
                await connected(s)
                ev = await s.next_event(10)
                assert ev.event == "resync" and ev.json() == {"reason": "history_gap"}, (n, ev)
                marker = 100 + n
                await assert_quiet_until(s, pub, marker)
            await collect(observer, 1)


async def test_resync_comes_before_live_events(gw: Any, merchant: Any, redis_server: Any):
    mid, shop = merchant
    async with Publisher(redis_server.url, mid) as pub:
        async with open_stream(gw.stream_url(shop), {"Last-Event-ID": "bogus-7"}) as s:
            await connected(s)
            await pub.send("stage", {"n": 1})
            first = await s.next_event(10)
            second = await s.next_event(10)
            assert (first.event, second.event) == ("resync", "stage")


# -- a Redis reconnect is a history gap --------------------------------------------


async def test_replay_across_a_redis_reconnect_is_a_gap(
    redis_factory: Any, postgres_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """Messages published while the subscriber was reconnecting were never seen:
    a client resuming from an id before that point must get resync, not a silent replay."""
    redis_server = redis_factory()
    gw = gateway_factory.start(redis=redis_server)
    merchant_id, shop = merchant
    channel = f"merchant:{merchant_id}:progress"
    async with open_stream(gw.stream_url(shop)) as first:
        await first.next_event_of("connected")
        await publish(redis_server.url, channel, {"jobId": "a", "n": 1})
        seen = await first.next_event_of("progress")
    client = aioredis.from_url(redis_server.url)
    try:
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await publish(redis_server.url, f"merchant:{merchant_id}:completion", {"jobId": "a"})

        async def reconnected() -> bool:
            status, _, body = await http_json(gw.url("/metrics"))
            return status == 200 and "gateway_redis_reconnects_total 1.0" in str(body)

        await wait_for(reconnected, timeout=15)
        await wait_for(lambda: _health_ok(gw), timeout=15)
    finally:
        await client.aclose()
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": seen.id}) as again:
        await again.next_event_of("connected")
        resync = await again.next_event(timeout=5)
        assert resync.event == "resync"
        assert json.loads(resync.data) == {"reason": "history_gap"}


async def _health_ok(gw: Any) -> bool:
    status, _, _ = await http_json(gw.url("/health"))
    return status == 200
