"""A durable id given twice: a failover lost the write the gateway had delivered.

Redis Cluster replicates asynchronously. A primary that is killed, or frozen
long enough to be failed over and then thawed, may acknowledge and publish a
durable event its replica never got; the gateway delivers it (on the old
primary's link, or on the new one: the cluster bus can still carry the deposed
primary's SPUBLISH), and the promoted replica gives the same offset to the
next event. That event is genuine (the history holds it) but at or below the
head the gateway proved, so it used to go out as a plain event, as if an old
envelope had been published again: under a process-local id, with no
`resync` (chaos, cluster seed 2002). It must go out with its id, after a
`resync` for the streams that got the lost one.

Here the loss is made exactly: the merchant's history and meta are dumped
before the lost event is published and restored after it, which is what the
promoted replica holds.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from support import open_stream, wait_for
from test_durable_e2e import DURABLE, connected, publish_durably

from gateway.durable.history import DurableHistory
from gateway.durable.ids import history_keys, lost_ids_key

pytestmark = pytest.mark.timeout(60)


async def _lose_a_write(gw: Any, client: aioredis.Redis, mid: str, s: Any) -> tuple[str, str]:
    """Publish d1, then an event the replica never gets, then fail over: the merchant's
    history and meta go back to before it. (d1's id, the lost event's id); the stream
    `s` received both."""
    first = await publish_durably(gw, mid, "d1")
    assert (await s.next_event(10)).id == first
    replica = {key: await client.dump(key) for key in history_keys(mid)}
    assert None not in replica.values()
    lost = await publish_durably(gw, mid, "lost")
    assert (await s.next_event(10)).id == lost
    for key, value in replica.items():  # failed over: the replica's history
        await client.restore(key, 0, value or b"", replace=True)
    return first, lost


async def _from_before_the_loss(gw: Any, shop: str, first: str,
                                expected: list[tuple[str, str]]) -> None:
    """A tab resuming from `first`, before the loss, gets what the history holds."""
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": first}) as s:
        await connected(s)
        got = await s.events(len(expected), 10)
    assert [(e.id, e.data) for e in got] == expected


@pytest.mark.parametrize("resubscribed", [False, True], ids=["same_link", "after_reconnect"])
async def test_an_id_a_failover_gave_again_reaches_streams_with_it(
    gateway_factory: Any, merchant: Any, redis_server: Any, resubscribed: bool
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            await connected(s)
            first, lost = await _lose_a_write(gw, client, mid, s)
            if resubscribed:  # the failover moved the merchant: its streams resync
                await client.client_kill_filter(_type="pubsub")
                resync = await s.next_event(10)
                assert resync.event == "resync", resync
            again = await publish_durably(gw, mid, "d2")
            assert again == lost  # the same id, now another event's
            got = await s.next_event(10)
            assert got.event == "resync", f"no resync before {got}"
            assert json.loads(got.data) == {"reason": "redis_reconnected"}
            got = await s.next_event(10)
    finally:
        await client.aclose()
    assert (got.id, got.data) == (again, "d2")
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": first}) as s:
        await connected(s)  # another tab resuming from before the loss: the history's d2
        got = await s.next_event(10)
    assert (got.id, got.data) == (again, "d2")


async def test_a_tab_that_got_a_lost_event_resyncs_on_another_process(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    """The tab got the lost event on one process (which then saw its id given again)
    and resumes with its id on another one that never saw it: the history holds an
    event under that id, so a replay would go on after it and the tab would never get
    the event that now holds the id. The first process records the loss in Redis;
    every process answers such an id with `resync`, from a history read and from
    its ring (chaos, cluster seed 2002: `reuse_missed`)."""
    mid, shop = merchant
    one = gateway_factory.start(config=DURABLE)
    other = gateway_factory.start(config=DURABLE)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with open_stream(one.stream_url(shop)) as s:
            await connected(s)
            first, lost = await _lose_a_write(one, client, mid, s)  # the tab got the lost one
            again = await publish_durably(one, mid, "d2")
            assert again == lost
            assert (await s.next_event(10)).event == "resync"
            assert (await s.next_event(10)).data == "d2"
        await wait_for(lambda: client.sismember(lost_ids_key(mid), lost),
                       message="the loss recorded in Redis")
        after = await publish_durably(one, mid, "d3")
        for path in ("history read", "ring"):  # the second reconnect finds d2 in the ring
            async with open_stream(other.stream_url(shop), headers={"Last-Event-ID": lost}) as s:
                await connected(s)
                got = await s.next_event(10)
                assert got.event == "resync", f"{path}: {got} (d2 skipped)"
                assert json.loads(got.data) == {"reason": "history_gap"}
        # (a tab that got d2 under that id resyncs too: the id cannot tell them apart)
        await _from_before_the_loss(other, shop, first, [(again, "d2"), (after, "d3")])
    finally:
        await client.aclose()


async def test_an_id_given_again_before_the_process_resubscribed_is_found_lost(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    """The new primary gave the lost event's id to another event before this process
    subscribed to it, so no process ever sees the id come again (chaos, cluster seed
    2306: `reuse_missed`). The first check after the gap compares what this process
    delivered with the history: the loss is found, recorded, and the streams resync.
    Made exactly: the gateway is stopped (SIGSTOP) while its subscriber connection is
    cut, the replica's history restored and the id given again; then it goes on."""
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    client = aioredis.Redis.from_url(redis_server.url)
    publisher = DurableHistory(client, channel="merchant:{merchant_id}:{event}", history=1000,
                               ttl_s=600)
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            await connected(s)
            first, lost = await _lose_a_write(gw, client, mid, s)  # the tab got the lost one
            gw.send_signal(signal.SIGSTOP)
            try:
                await client.client_kill_filter(_type="pubsub")  # failed over: resubscribes
                again = await publisher.publish(mid, "stage", b"d2")  # while not subscribed
            finally:
                gw.send_signal(signal.SIGCONT)
            assert again == lost  # the same id, now another event's
            got = await s.next_event(10)
            assert (got.event, json.loads(got.data)) == ("resync", {"reason": "redis_reconnected"})
            after = await publish_durably(gw, mid, "d3")  # the first event after the gap
            got = await s.next_event(10)
            assert got.event == "resync", f"the loss of {lost} went unnoticed: {got}"
            got = await s.next_event(10)
            assert (got.id, got.data) == (after, "d3")
        await wait_for(lambda: client.sismember(lost_ids_key(mid), lost),
                       message="the loss recorded in Redis")
        async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": lost}) as s:
            await connected(s)  # a tab resuming from the lost event: d2 would be skipped
            got = await s.next_event(10)
            assert (got.event, json.loads(got.data)) == ("resync", {"reason": "history_gap"})
        await _from_before_the_loss(gw, shop, first, [(again, "d2"), (after, "d3")])
    finally:
        await client.aclose()
