"""Where a gap lies in a merchant's ring when Redis went away at an awkward moment:
while an envelope waited for its check, while a history read was under way, and
when recording a failover's lost ids failed. Each time a client resuming from an
id before the gap must get what it missed, from Redis, or `resync`: never a
silent gap. The real Hub, EnvelopeCheck, DurableReplay, Stream and DurableHistory
on a real Redis; what the subscriber would read is handed to the hub by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from support import unique_merchant

from gateway.durable.envelopes import EnvelopeCheck, merchant_flush
from gateway.durable.history import DurableHistory
from gateway.durable.ids import DurableId
from gateway.durable.replay import DurableReplay
from gateway.fanout.frames import Control, Entry
from gateway.fanout.hub import Hub
from gateway.fanout.stream import Stream
from gateway.fanout.stream_policy import QueuePolicy
from gateway.metrics import Metrics
from tools.services import RedisServer

POLICY = QueuePolicy(10_000, frozenset(), "jobId", 1 << 30)
RESYNC = Control("resync", {"reason": "redis_reconnected"})


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


def history_of(client: aioredis.Redis) -> DurableHistory:
    return DurableHistory(client, channel="merchant:{merchant_id}:{event}", history=100,
                          ttl_s=600)


async def no_wait() -> float:
    return 0.0


class AnsweredLater:
    """The real check, answering only on `answer()`: a check in flight while Redis froze."""

    def __init__(self, check: EnvelopeCheck) -> None:
        self.check = check
        self.asked: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.asked.append(args)

    def answer(self) -> None:
        asked, self.asked = self.asked, []
        for args in asked:
            self.check(*args)


async def resumed(hub: Hub, replay: DurableReplay, merchant_id: str,
                  last: str) -> list[str] | None:
    """What a stream resuming from `last` gets queued; None: `resync`."""
    stream = Stream(merchant_id, "shop", "client", POLICY, Metrics())
    held, gap = hub.attach(merchant_id, stream, last)
    if await replay.resume(stream, last, held, gap) is None:
        return None
    return [e.id for e in (stream._queue or {}).values() if isinstance(e, Entry)]


async def test_an_envelope_held_across_a_resync_stays_before_the_gap(
    client: aioredis.Redis,
) -> None:
    """:4, the first durable event after subscribing, waits for its check when the
    subscriber's link is cut; :5-:7 are published while it is down. Delivered after
    the gap mark, :4 counted as after the gap: a client resuming from it was told it
    missed nothing, and a later read taught the head, so :8 needed no check."""
    mid, _ = unique_merchant("gapheld")
    history = history_of(client)
    check = EnvelopeCheck(client, ["progress"])
    later = AnsweredLater(check)
    hub = Hub(history=100, verify=later)
    replay = DurableReplay(history, merchant_flush(no_wait, check, hub), hub, Metrics())
    try:
        ids = [await history.publish(mid, "progress", b"%d" % n) for n in range(1, 8)]
        hub.open(mid)  # subscribed after :3 was published
        hub.publish(mid, "progress", b"4", ids[3])
        assert hub.held_back(mid)
        hub.resync([mid], RESYNC)  # :5-:7 never reach this process
        hub.live_again([mid], RESYNC)
        later.answer()
        await check.settled(lambda: hub.held_back(mid))
        assert await resumed(hub, replay, mid, ids[3]) == ids[4:7]
    finally:
        await check.close()
        await history.close()


async def test_a_read_sent_while_the_channels_were_down_does_not_teach_the_ring(
    client: aioredis.Redis,
) -> None:
    """A client resumes while the link is down; its history read ends at :3, and :4 is
    published before the channels are subscribed again (never received). The read
    used to backfill the ring and set :4 as the next id, so a client at :3 got nothing."""
    mid, _ = unique_merchant("gapread")
    history = history_of(client)
    check = EnvelopeCheck(client, ["progress"])
    hub = Hub(history=100, verify=check)
    canary = asyncio.Event()

    async def round_trip() -> float:  # answers once the link is subscribed again
        await canary.wait()
        return 0.0

    read = asyncio.Event()
    read_all = history.read_all

    async def read_all_then_say(merchant_id: str) -> Any:
        snapshot = await read_all(merchant_id)
        read.set()
        return snapshot

    history.read_all = read_all_then_say  # type: ignore[method-assign]
    replay = DurableReplay(history, merchant_flush(round_trip, check, hub), hub, Metrics())
    try:
        ids = [await history.publish(mid, "progress", b"%d" % n) for n in range(1, 4)]
        hub.open(mid)
        hub.resync([mid], RESYNC)
        first = asyncio.ensure_future(resumed(hub, replay, mid, ids[1]))
        await asyncio.wait_for(read.wait(), 5)  # Redis answered; the flush waits for the link
        lost = await history.publish(mid, "progress", b"4")
        hub.live_again([mid], RESYNC)
        canary.set()
        assert await first == [ids[2]]
        assert await resumed(hub, replay, mid, ids[2]) == [lost]
    finally:
        await check.close()
        await history.close()


async def test_an_id_a_failover_gave_again_resyncs_here_when_recording_it_failed(
    client: aioredis.Redis, redis_server: RedisServer,
) -> None:
    """This process delivered :5; a failover gave :5 to another event, which it then
    delivered too. Recording that in Redis failed (Redis was erroring). A client that
    read the old :5 resuming here matched the new :5 in the ring and skipped it."""
    mid, _ = unique_merchant("gapreused")
    history = history_of(client)
    check = EnvelopeCheck(client, ["progress"])
    recorded: list[tuple[DurableId, DurableId]] = []
    hub = Hub(history=100, verify=check, on_lost=lambda m, a, b: recorded.append((a, b)))
    replay = DurableReplay(history, merchant_flush(no_wait, check, hub), hub, Metrics())
    settled: Callable[[], Any] = lambda: check.settled(lambda: hub.held_back(mid))  # noqa: E731
    try:
        ids = [await history.publish(mid, "progress", b"old%d" % n) for n in range(1, 6)]
        hub.open(mid)
        for n, event_id in enumerate(ids, 1):
            hub.publish(mid, "progress", b"old%d" % n, event_id)
            await settled()
        key, meta = f"gateway:history:{{{mid}}}", f"gateway:meta:{{{mid}}}"
        kept = (await client.xrange(key))[:4]  # the promoted replica never got :5
        await client.delete(key)
        for entry_id, fields in kept:
            await client.xadd(key, fields, id=entry_id)
        await client.hset(meta, "offset", 4)
        again = await history.publish(mid, "progress", b"new5")
        assert again == ids[4]
        hub.publish(mid, "progress", b"new5", again)
        await settled()
        assert recorded, "the hub did not see the id given again"
        assert await client.exists(f"gateway:lost:{{{mid}}}") == 0  # as if recording failed
        assert await resumed(hub, replay, mid, ids[4]) is None
    finally:
        await check.close()
        await history.close()
