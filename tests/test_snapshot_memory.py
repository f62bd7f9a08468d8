"""A job-state read kept in memory serves later streams of the merchant without a
Redis read, only while no durable event of the merchant was delivered since it
was sent: each new stream still gets the state then every later durable event,
none twice (pure unit: a real Hub, a fake history)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.durable import snapshots as snapshots_module
from gateway.durable.ids import DurableId
from gateway.durable.jobs import JobRecord
from gateway.durable.snapshots import Snapshots
from gateway.fanout.hub import Hub
from gateway.fanout.stream import Stream
from gateway.fanout.stream_policy import QueuePolicy
from gateway.fanout.verdict import Verify
from gateway.metrics import Metrics
from gateway.resyncs import Resyncs

MID = "m1"
POLICY = QueuePolicy(max_queue=100, coalesce=frozenset(), job_key="jobId",
                     max_queue_bytes=1 << 20)


class FakeHistory:
    """The merchant's job state as the publish script keeps it; counts reads.
    `during_read`, when set, runs while a read is on its way (then cleared)."""

    def __init__(self) -> None:
        self.reads = 0
        self.head: DurableId | None = None
        self.jobs: dict[str, JobRecord] = {}
        self.during_read = None
        self.fail = False

    def record(self, offset: int, job: str | None, event: str = "progress") -> bytes:
        """A durable publish at ep:offset: the state it leaves; its payload."""
        payload = json.dumps({"jobId": job, "n": offset} if job else {"n": offset}).encode()
        self.head = DurableId("ep", offset)
        if job is not None:
            self.jobs[job] = JobRecord(job, self.head, event, payload, False)
        return payload

    async def read_jobs(self, merchant_id: str) -> tuple[DurableId | None, list[JobRecord]]:
        self.reads += 1
        answer = (self.head, list(self.jobs.values()))  # the MULTI: state as sent
        await asyncio.sleep(0)
        if self.during_read is not None:
            during, self.during_read = self.during_read, None
            during()
        if self.fail:
            raise RedisConnectionError("gone")
        return answer


class World:
    def __init__(self, verify: Verify | None = None) -> None:
        self.history = FakeHistory()
        self.missed: list[str] = []
        # no verify: every envelope is trusted as it comes
        self.hub = Hub(history=10, verify=verify, on_missed=self.missed.extend)
        self.now = 1000.0
        self.snapshots = Snapshots(self.history, self._flush, self.hub,  # type: ignore[arg-type]
                                   Metrics(), job_key="jobId")
        self.snapshots.clock = lambda: self.now
        self.resyncs = Resyncs(self.hub, self.snapshots)  # as app.py wires the broker

    async def _flush(self, merchant_id: str) -> float:
        await asyncio.sleep(0)
        return 0.0

    def publish(self, offset: int, job: str | None) -> None:
        """Published durably, and its message delivered to the hub."""
        payload = self.history.record(offset, job)
        self.hub.publish(MID, "progress", payload, f"ep:{offset}")

    async def connect(self) -> Stream:
        """What the stream handler does for a stream without a Last-Event-ID."""
        stream = Stream(MID, "shop", "client", POLICY, Metrics())
        self.hub.attach(MID, stream, None)
        await self.snapshots.open(stream, [])
        return stream


async def held_released(w: World) -> None:
    """Every hold's snapshot read has answered and its streams are released."""
    while w.snapshots._tasks:
        await asyncio.wait(set(w.snapshots._tasks))


def queued(stream: Stream) -> list[tuple[str, str | None]]:
    """(event, id) of what the stream would write, in order."""
    return [(e.event, getattr(e, "id", None)) for e in (stream._queue or {}).values()]


def jobs(stream: Stream) -> list[str]:
    frame = next(e for e in (stream._queue or {}).values() if e.event == "snapshot")
    body = frame.wire[1].split(b"data: ", 1)[1].split(b"\n", 1)[0]
    return [job["id"] for job in json.loads(body)["jobs"]]


async def test_a_read_serves_later_streams_while_nothing_durable_arrives() -> None:
    w = World()
    w.publish(1, "A")
    w.publish(2, "B")
    first = await w.connect()
    assert w.history.reads == 1 and queued(first) == [("snapshot", "ep:2")]
    w.hub.publish(MID, "stage", b"plain")  # plain events are not job state
    later = [await w.connect() for _ in range(5)]
    assert w.history.reads == 1
    for stream in later:
        assert queued(stream) == [("snapshot", "ep:2")] and jobs(stream) == ["ep:1", "ep:2"]
    w.publish(3, "A")  # every stream gets what follows the snapshot, once
    assert [e for e, _ in queued(first)] == ["snapshot", "stage", "progress"]
    assert queued(first)[-1] == ("progress", "ep:3")
    for stream in later:
        assert queued(stream) == [("snapshot", "ep:2"), ("progress", "ep:3")]


async def test_a_durable_event_delivered_since_the_read_forces_a_new_one() -> None:
    w = World()
    w.publish(1, "A")
    await w.connect()
    w.publish(2, "A")
    second = await w.connect()
    assert w.history.reads == 2
    assert queued(second) == [("snapshot", "ep:2")] and jobs(second) == ["ep:2"]
    w.publish(3, None)  # a durable event without a job moves the head as well
    third = await w.connect()
    assert w.history.reads == 3 and queued(third) == [("snapshot", "ep:3")]


async def test_a_durable_event_delivered_while_reading_is_never_lost_to_a_later_stream() -> None:
    """Published after the read was sent and delivered before it answered: the read
    does not hold it, so it must not be served to a stream that attaches later."""
    w = World()
    w.publish(1, "A")
    w.history.during_read = lambda: w.publish(2, "A")
    first = await w.connect()
    assert queued(first) == [("snapshot", "ep:1"), ("progress", "ep:2")]  # live, after it
    second = await w.connect()
    assert w.history.reads == 2, "the read from before ep:2 was not kept"
    assert queued(second) == [("snapshot", "ep:2")] and jobs(second) == ["ep:2"]


async def test_a_gap_or_a_new_subscription_forces_a_new_read() -> None:
    w = World()
    w.publish(1, "A")
    await w.connect()
    w.hub.mark_gap([MID])  # Redis reconnected: messages may have been lost
    await w.connect()
    assert w.history.reads == 2
    await w.connect()
    assert w.history.reads == 2
    w.hub.drop(MID)  # the merchant's linger ended; a new subscription is a new topic
    await w.connect()
    assert w.history.reads == 3


async def test_a_kept_read_is_served_for_a_bounded_time() -> None:
    w = World()
    w.publish(1, "A")
    await w.connect()
    w.now += 4.9
    await w.connect()
    assert w.history.reads == 1
    w.now += 0.2
    await w.connect()
    assert w.history.reads == 2


async def test_no_job_state_is_kept_until_the_first_durable_event() -> None:
    w = World()
    assert queued(await w.connect()) == []
    assert queued(await w.connect()) == []
    assert w.history.reads == 1
    w.publish(1, "A")
    assert queued(await w.connect()) == [("snapshot", "ep:1")]
    assert w.history.reads == 2


async def test_a_failed_read_is_not_kept() -> None:
    w = World()
    w.publish(1, "A")
    w.history.fail = True
    assert queued(await w.connect()) == []
    w.history.fail = False
    assert queued(await w.connect()) == [("snapshot", "ep:1")]
    assert w.history.reads == 2


async def test_merchants_no_longer_held_are_forgotten() -> None:
    w = World()
    for n in range(200):
        w.hub.open(f"m{n}")
    for n in range(200):
        stream = Stream(f"m{n}", "shop", "client", POLICY, Metrics())
        w.hub.attach(f"m{n}", stream, None)
        await w.snapshots.open(stream, [])
    for n in range(200):
        w.hub.drop(f"m{n}")
    w.hub.open("m-last")
    stream = Stream("m-last", "shop", "client", POLICY, Metrics())
    w.hub.attach("m-last", stream, None)
    await w.snapshots.open(stream, [])
    assert len(w.snapshots._kept) <= 2 * len(w.hub) + 64


async def test_a_stream_opening_during_a_resync_gets_a_snapshot_after_the_resync() -> None:
    """A stream attaches while the subscriber link reconnects (after the resync went
    out) and reads its opening snapshot; the channels come back before that read
    starts, so the resync's hold shares the same read. The stream gets the resync
    when live again, and a snapshot after it: the shared read's frame queued twice
    under one key kept only its first place, before the resync."""
    w = World()
    w.publish(1, "A")
    early = await w.connect()
    w.resyncs.resync([MID])  # the link's first answer from Redis
    late = Stream(MID, "shop", "client", POLICY, Metrics())
    w.hub.attach(MID, late, None)
    opening = asyncio.ensure_future(w.snapshots.open(late, []))
    await asyncio.sleep(0)  # its read is gathering callers: not sent yet
    w.resyncs.live_again([MID])  # every channel subscribed again
    assert await opening
    await held_released(w)
    assert w.history.reads == 2  # the early stream's, then the shared one
    assert queued(late) == [("snapshot", "ep:1"), ("resync", None), ("snapshot", "ep:1")]
    assert queued(early) == [("snapshot", "ep:1"), ("resync", None), ("snapshot", "ep:1")]


async def test_a_first_stream_during_a_reconnect_gets_no_snapshot_without_a_resync() -> None:
    """Found by chaos (single seed 2315): the link reconnects while the merchant has
    no stream on the process (its first one is still subscribing); the stream then
    attaches and resumes from Redis before the channels are live again. It got no
    `resync`, but the hold for snapshots took it all the same: `snapshot` followed
    its replay unannounced."""
    w = World()
    w.publish(1, "A")
    w.resyncs.resync([MID])  # the link's first answer: no topic of MID yet
    stream = Stream(MID, "shop", "client", POLICY, Metrics())
    w.hub.attach(MID, stream, "ep:1")  # resuming: caught up, no snapshot of its own
    w.resyncs.live_again([MID])
    await held_released(w)
    assert queued(stream) == []
    w.publish(2, "A")
    assert queued(stream) == [("progress", "ep:2")]


async def test_messages_found_missed_during_a_link_reconnect_keep_its_window_open() -> None:
    """The hub finds messages missed (a resync with its hold, at once) while the
    subscriber link is still reconnecting: a stream attaching after that, before the
    link is live again, still gets the link's resync before the link's snapshot."""
    w = World()
    w.publish(1, "A")
    await w.connect()
    w.resyncs.resync([MID])  # the link's first answer from Redis
    w.resyncs.missed([MID])  # the hub: an envelope showed messages that never came
    late = await w.connect()  # its own snapshot, from a read of its own
    w.resyncs.live_again([MID])
    await held_released(w)
    assert queued(late) == [("snapshot", "ep:1"), ("resync", None), ("snapshot", "ep:1")]


async def test_messages_found_missed_during_a_link_reconnect_get_one_snapshot() -> None:
    """Messages found missed while the link still reconnects: the link's `live_again`
    holds the streams for the snapshot. A hold of its own at once gave a stream a
    snapshot, then the link's, with no `resync` between the two."""
    w = World()
    w.publish(1, "A")
    early = await w.connect()
    w.resyncs.resync([MID])  # the link's first answer from Redis
    w.resyncs.missed([MID])  # the hub: an envelope showed messages that never came
    await held_released(w)
    w.publish(2, "A")
    w.resyncs.live_again([MID])
    await held_released(w)
    assert queued(early) == [("snapshot", "ep:1"), ("resync", None), ("resync", None),
                             ("progress", "ep:2"), ("snapshot", "ep:2")]


async def test_messages_found_missed_while_live_get_their_snapshot_at_once() -> None:
    w = World()
    w.publish(1, "A")
    stream = await w.connect()
    w.resyncs.missed([MID])
    await held_released(w)
    assert queued(stream) == [("snapshot", "ep:1"), ("resync", None), ("snapshot", "ep:1")]
    later = await w.connect()  # channels live: no resync owed to a stream attaching now
    w.publish(2, "A")
    assert queued(later) == [("snapshot", "ep:1"), ("progress", "ep:2")]


async def test_a_flush_that_never_ends_releases_the_held_streams_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read and its flush share one deadline: a flush kept waiting (a merchant whose
    messages stay held for checks) cannot hold the merchant's streams forever; they are
    released without a snapshot, as on a Redis fault."""
    monkeypatch.setattr(snapshots_module, "_READ_TIMEOUT_S", 0.2)
    w = World()
    w.publish(1, "A")
    stream = Stream(MID, "shop", "client", POLICY, Metrics())
    w.hub.attach(MID, stream, None)
    never = asyncio.Event()

    async def stuck(merchant_id: str) -> float:
        await never.wait()
        return 0.0

    w.snapshots._flush = stuck
    w.resyncs.missed([MID])  # resync, and hold the streams for the snapshot
    assert stream._held is not None
    async with asyncio.timeout(5):
        await held_released(w)
    assert stream._held is None and [e for e, _ in queued(stream)] == ["resync"]


async def test_an_event_under_the_snapshots_id_is_checked_and_resyncs_first() -> None:
    """Chaos cluster seed 2309: the state was read from a primary about to lose its
    newest write (ep:2; its message never came here). The new primary gave ep:2 to
    another event, which continued this process's proven head (ep:1) without a
    check: the client got ep:2 after `snapshot ep:2`, and kept the lost state. A
    flushed read now teaches the hub its head, so that event is checked, found under
    an id given again, and the merchant's streams resync before it."""
    def holds_it(*asked: Any) -> None:
        done = asked[-1]
        done(True, False, None)  # the history holds the event under its id

    w = World(verify=holds_it)
    await w.connect()  # no state yet: no snapshot
    w.publish(1, "A")
    w.history.record(2, "A")  # the write the failover loses
    w.resyncs.resync([MID])  # the link's first answer from Redis after a freeze
    w.resyncs.live_again([MID])
    await held_released(w)
    stream = await w.connect()
    assert queued(stream) == [("snapshot", "ep:2")]
    assert w.missed == []
    w.hub.publish(MID, "progress", b'{"jobId":"B","n":2}', "ep:2")  # another event, same id
    assert w.missed == [MID], "the event went out under the snapshot's id without a resync"
    assert queued(stream)[-1] == ("progress", "ep:2")


async def test_a_read_that_teaches_the_head_is_kept_all_the_same() -> None:
    """The first read after a subscribe moves the hub's proven head to the read's (no
    durable event had come yet): the read is still kept for the next streams."""
    w = World()
    w.history.record(1, "A")  # published before this process subscribed
    await w.connect()
    await w.connect()
    assert w.history.reads == 1


async def test_the_same_with_nothing_delivered_here_before_the_snapshot() -> None:
    """The first stream of the merchant: the ring is empty, so it cannot tell another
    event under the snapshot's id from a copy of one sent here; the head came from the
    read, so it is not taken for a copy (that went out as a plain event, no resync)."""
    def holds_it(*asked: Any) -> None:
        done = asked[-1]
        done(True, False, None)

    w = World(verify=holds_it)
    w.history.record(5, "L")  # the write the failover loses
    stream = await w.connect()
    assert queued(stream) == [("snapshot", "ep:5")]
    w.hub.publish(MID, "progress", b'{"jobId":"K","n":5}', "ep:5")
    assert w.missed == [MID] and w.hub.forged == 0
    assert queued(stream)[-1] == ("progress", "ep:5")


async def test_a_copy_of_an_older_event_after_a_read_stays_a_copy() -> None:
    """The same envelope PUBLISHed again (ep:3, below the snapshot's ep:5) with an
    empty ring: a copy, sent as a plain event, as before; taken for an id given again,
    it recorded ep:3..ep:5 as lost for every process and moved the head back."""
    def holds_it(*asked: Any) -> None:
        done = asked[-1]
        done(True, False, None)

    w = World(verify=holds_it)
    w.history.record(5, "L")
    await w.connect()
    w.hub.publish(MID, "progress", b'{"jobId":"L","n":3}', "ep:3")
    assert w.missed == [] and w.hub.forged == 1
    assert w.hub.proves(MID, DurableId("ep", 5))
