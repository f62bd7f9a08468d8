"""Concurrent replays of one merchant share one history read, and what it read is
put in front of the merchant's ring for later reconnects (pure unit, fake history)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.durable.ids import DurableEvent, DurableId, HistoryHead, HistorySnapshot
from gateway.durable.replay import DurableReplay
from gateway.fanout.frames import Entry
from gateway.fanout.hub import Hub
from gateway.fanout.stream import Stream
from gateway.fanout.stream_policy import QueuePolicy
from gateway.metrics import Metrics


class FakeHistory:
    """Answers read_all after `gate` opens; counts reads."""

    def __init__(self, head: int) -> None:
        self.reads = 0
        self.head_reads = 0
        self.head = head
        self.gate = asyncio.Event()
        self.gate.set()
        self.reading = asyncio.Event()  # a read was sent

    async def read_all(self, merchant_id: str) -> HistorySnapshot:
        self.reads += 1
        self.reading.set()
        head = self.head
        await self.gate.wait()
        events = tuple(
            DurableEvent(DurableId("ep", n), "progress", b"%d" % n) for n in range(1, head + 1)
        )
        return HistorySnapshot("ep", head, events)

    async def read_head(self, merchant_id: str) -> HistoryHead:
        self.head_reads += 1
        return HistoryHead(DurableId("ep", self.head))


def offsets(entries: list[Entry] | None) -> list[int]:
    return [DurableId.parse(e.id).offset for e in entries or []]  # type: ignore[union-attr]


async def _flush(merchant_id: str) -> float:
    return 0.0


def _replay(history: FakeHistory) -> DurableReplay:
    return DurableReplay(history, _flush, Hub(history=0), Metrics())  # type: ignore[arg-type]


async def test_a_storm_of_replays_costs_one_read() -> None:
    history = FakeHistory(head=10)
    replay = _replay(history)
    results = await asyncio.gather(
        *(replay.after("m", DurableId("ep", n % 10)) for n in range(50))
    )
    assert history.reads == 1
    for n, events in enumerate(results):
        assert events is not None
        assert offsets(events) == list(range(n % 10 + 1, 11))


async def test_replays_arriving_during_a_read_share_the_next_one() -> None:
    history = FakeHistory(head=3)
    replay = _replay(history)
    history.gate.clear()
    first = asyncio.ensure_future(replay.after("m", DurableId("ep", 1)))
    await history.reading.wait()  # the first read is sent and waiting on Redis
    assert history.reads == 1
    history.head = 5  # events published meanwhile: only a read sent later sees them
    late = [asyncio.ensure_future(replay.after("m", DurableId("ep", 2))) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert history.reads == 1  # the late ones wait for the read in flight
    history.gate.set()
    assert offsets(await first) == [2, 3]
    for events in await asyncio.gather(*late):
        assert offsets(events) == [3, 4, 5]  # none was served stale
    assert history.reads == 2


async def test_merchants_do_not_share_reads() -> None:
    history = FakeHistory(head=2)
    replay = _replay(history)
    last = DurableId("ep", 1)
    await asyncio.gather(replay.after("a", last), replay.after("b", last))
    assert history.reads == 2


async def test_an_id_the_history_cannot_bridge_is_none() -> None:
    history = FakeHistory(head=4)
    replay = _replay(history)
    assert await replay.after("m", DurableId("other-epoch", 1)) is None
    assert await replay.after("m", DurableId("ep", 9)) is None
    assert await replay.after("m", DurableId("ep", 4)) == []


class Recorder:
    def __init__(self) -> None:
        self.got: list[Entry] = []

    def deliver(self, entry: Entry) -> None:  # type: ignore[override]
        self.got.append(entry)


async def test_a_read_backfills_the_ring_so_later_reconnects_need_no_read() -> None:
    history = FakeHistory(head=10)
    hub = Hub(history=100)
    replay = DurableReplay(history, _flush, hub, Metrics())  # type: ignore[arg-type]
    hub.attach("m", Recorder(), None)  # the first reconnect's stream, subscribed
    assert offsets(await replay.after("m", DurableId("ep", 3))) == list(range(4, 11))
    hub.publish("m", "progress", b"11", "ep:11")  # live after the read
    for n in (1, 5, 10):  # later reconnects: the ring bridges, Redis is not asked
        replayed, gap = hub.attach("m", Recorder(), f"ep:{n}")
        assert not gap
        assert offsets(replayed) == list(range(n + 1, 12))
    assert history.reads == 1


class LaggingSubscriber:
    """This process's subscriber, behind Redis: `lagging` events are still in its
    socket when a reconnect arrives, and reach the hub during the replay's flush
    (the canary round trip is behind them on the same connection)."""

    def __init__(self, hub: Hub, lagging: range) -> None:
        self.hub = hub
        self.lagging = lagging

    async def flush(self, merchant_id: str) -> float:
        for n in self.lagging:  # each message reaches the hub once
            self.hub.publish("m", "progress", b"%d" % n, f"ep:{n}")
        self.lagging = range(0)
        return 0.0


def _stream() -> Stream:
    policy = QueuePolicy(max_queue=1000, coalesce=frozenset(), job_key="jobId",
                         max_queue_bytes=1 << 20)
    return Stream("m", "shop", "client", policy, Metrics())


def _queued_offsets(stream: Stream) -> list[int]:
    return offsets([e for e in stream._queue.values() if isinstance(e, Entry)])  # type: ignore[union-attr]


async def test_a_reconnect_from_a_faster_process_gets_nothing_it_already_has() -> None:
    """The client saw up to ep:8 on another process; here the ring holds up to ep:5
    and ep:6-10 are still on their way from Redis. Nothing up to ep:8 may come again."""
    history = FakeHistory(head=10)
    hub = Hub(history=100)
    hub.attach("m", Recorder(), None)  # another stream keeps the merchant subscribed
    for n in range(1, 6):
        hub.publish("m", "progress", b"%d" % n, f"ep:{n}")
    subscriber = LaggingSubscriber(hub, range(6, 11))
    replay = DurableReplay(history, subscriber.flush, hub, Metrics())  # type: ignore[arg-type]
    stream = _stream()
    held, gap = hub.attach("m", stream, "ep:8")
    assert gap  # the ring does not hold ep:8 yet
    replayed = await replay.resume(stream, "ep:8", held, gap)
    assert replayed is not None
    assert _queued_offsets(stream) == [9, 10]


async def test_a_reconnect_joining_a_read_in_flight_gets_nothing_it_already_has() -> None:
    """Same, when the reconnect waits for another stream's read and is then served
    from the ring that read backfilled."""
    history = FakeHistory(head=10)
    hub = Hub(history=100)
    hub.attach("m", Recorder(), None)
    for n in range(3, 6):  # the ring starts at ep:3: ep:2 needs a read
        hub.publish("m", "progress", b"%d" % n, f"ep:{n}")
    subscriber = LaggingSubscriber(hub, range(6, 11))
    replay = DurableReplay(history, subscriber.flush, hub, Metrics())  # type: ignore[arg-type]
    history.gate.clear()
    first = _stream()
    held, gap = hub.attach("m", first, "ep:2")
    first_resume = asyncio.ensure_future(replay.resume(first, "ep:2", held, gap))
    await history.reading.wait()  # its read is in flight
    second = _stream()
    held, gap = hub.attach("m", second, "ep:8")
    second_resume = asyncio.ensure_future(replay.resume(second, "ep:8", held, gap))
    history.gate.set()
    assert await first_resume is not None and await second_resume is not None
    assert _queued_offsets(first) == list(range(3, 11))
    assert _queued_offsets(second) == [9, 10]


async def test_ids_the_history_cannot_hold_resync_without_a_read() -> None:
    history = FakeHistory(head=10)
    hub = Hub(history=100)
    replay = DurableReplay(history, _flush, hub, Metrics())  # type: ignore[arg-type]
    for last in ("other:3", "ep:11"):  # another history; past the newest event
        stream = _stream()
        held, gap = hub.attach("m", stream, last)
        assert await replay.resume(stream, last, held, gap) is None
    assert history.reads == 0 and history.head_reads == 2


class BrokenHistory(FakeHistory):
    async def read_all(self, merchant_id: str) -> HistorySnapshot:
        raise KeyError("a bug, not a Redis fault")


async def test_a_bug_in_a_read_is_raised_not_turned_into_a_resync() -> None:
    history = BrokenHistory(head=10)
    hub = Hub(history=100)
    replay = DurableReplay(history, _flush, hub, Metrics())  # type: ignore[arg-type]
    stream = _stream()
    held, gap = hub.attach("m", stream, "ep:3")
    with pytest.raises(KeyError):
        await replay.resume(stream, "ep:3", held, gap)


async def test_a_redis_fault_in_a_read_is_a_resync() -> None:
    history = FakeHistory(head=10)

    async def refused(merchant_id: str) -> HistorySnapshot:
        raise RedisConnectionError("Redis is down")

    history.read_all = refused  # type: ignore[method-assign]
    hub = Hub(history=100)
    replay = DurableReplay(history, _flush, hub, Metrics())  # type: ignore[arg-type]
    stream = _stream()
    held, gap = hub.attach("m", stream, "ep:3")
    assert await replay.resume(stream, "ep:3", held, gap) is None
