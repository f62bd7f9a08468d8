"""A history or state read merges with live events only once the merchant's own held
envelope was checked, however many other merchants' checks are queued ahead of it
(pure unit: the real EnvelopeCheck, Hub, replay and snapshots; a fake Redis MULTI).

After a subscriber reconnect every merchant's first durable event is held for a check,
one claim per MULTI on Redis Cluster. The flush used to wait for a fixed number of
rounds of checks; behind a longer queue it returned while the merchant's event was
still held, and that event then reached the stream a second time (replay) or after a
snapshot that already held it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.durable.envelopes import EnvelopeCheck, merchant_flush
from gateway.durable.ids import DurableEvent, DurableId, HistoryHead, HistorySnapshot
from gateway.durable.jobs import JobRecord
from gateway.durable.replay import DurableReplay
from gateway.durable.snapshots import Snapshots
from gateway.fanout.frames import Entry
from gateway.fanout.hub import Hub
from gateway.fanout.stream import Stream
from gateway.fanout.stream_policy import QueuePolicy
from gateway.metrics import Metrics

MERCHANTS = 40  # far more checks queued ahead of the last merchant's than 8 rounds answer
HEAD = 5
POLICY = QueuePolicy(max_queue=1000, coalesce=frozenset(), job_key="jobId",
                     max_queue_bytes=1 << 20)


def payload(offset: int) -> bytes:
    return b'{"jobId":"j","n":%d}' % offset


class FakeMulti:
    """Every merchant's history is ep:1..HEAD; each MULTI takes a moment to answer."""

    def __init__(self) -> None:
        self.replies: list[Any] = []

    async def __aenter__(self) -> FakeMulti:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def hmget(self, key: str, *fields: str) -> FakeMulti:
        self.replies.append([b"ep", b"%d" % HEAD])
        return self

    def xrange(self, key: str, low: str, high: str) -> FakeMulti:
        offset = int(low.split("-")[1])
        self.replies.append([(b"0-%d" % offset, {b"e": b"progress", b"d": payload(offset)})])
        return self

    async def execute(self) -> list[Any]:
        await asyncio.sleep(0.001)
        return self.replies


class FakeRedis:
    def pipeline(self, transaction: bool = True) -> FakeMulti:
        return FakeMulti()


class FakeHistory:
    async def read_all(self, merchant_id: str) -> HistorySnapshot:
        events = tuple(DurableEvent(DurableId("ep", n), "progress", payload(n))
                       for n in range(1, HEAD + 1))
        return HistorySnapshot("ep", HEAD, events)

    async def read_head(self, merchant_id: str) -> HistoryHead:
        return HistoryHead(DurableId("ep", HEAD))

    async def read_jobs(self, merchant_id: str) -> tuple[DurableId, list[JobRecord]]:
        record = JobRecord.parse(b"j", b"ep:%d\n\n0\nprogress\n" % HEAD + payload(HEAD))
        assert record is not None
        return DurableId("ep", HEAD), [record]


async def _instant_round_trip() -> float:
    return 0.0


def _wired() -> tuple[Hub, EnvelopeCheck, Any]:
    check = EnvelopeCheck(FakeRedis(), ["progress"])
    check._batch = 1  # as on Redis Cluster: one claim per MULTI
    hub = Hub(history=100, verify=check)
    for i in range(MERCHANTS):
        hub.open(f"m{i}")
    return hub, check, merchant_flush(_instant_round_trip, check, hub)


def _every_first_event_held(hub: Hub) -> None:
    """The first durable event of every merchant after a reconnect: each needs a check."""
    for i in range(MERCHANTS):
        hub.publish(f"m{i}", "progress", payload(HEAD), f"ep:{HEAD}")


async def _every_check_answered(check: EnvelopeCheck) -> None:
    async with asyncio.timeout(5):
        await check.settled(lambda: True)  # until no check is queued or under way


def _queued(stream: Stream) -> list[tuple[str, str | None]]:
    return [(e.event, e.id) for e in stream._queue.values() if isinstance(e, Entry)]


async def test_a_replay_waits_for_its_merchants_check_behind_a_queue_of_others() -> None:
    hub, check, flush = _wired()
    replay = DurableReplay(FakeHistory(), flush, hub, Metrics())  # type: ignore[arg-type]
    target = f"m{MERCHANTS - 1}"
    stream = Stream(target, "shop", "client", POLICY, Metrics())
    held, gap = hub.attach(target, stream, "ep:3")
    _every_first_event_held(hub)

    assert await replay.resume(stream, "ep:3", held, gap) is not None  # not a resync
    await _every_check_answered(check)
    assert not hub.held_back(target)
    assert _queued(stream) == [("progress", "ep:4"), ("progress", "ep:5")]

    later = Stream(target, "shop", "client", POLICY, Metrics())  # a reconnect from memory
    held, gap = hub.attach(target, later, "ep:3")
    assert (gap, [e.id for e in held]) == (False, ["ep:4", "ep:5"])


async def test_a_snapshot_waits_for_its_merchants_check_behind_a_queue_of_others() -> None:
    hub, check, flush = _wired()
    snapshots = Snapshots(FakeHistory(), flush, hub, Metrics(),  # type: ignore[arg-type]
                          job_key="jobId")
    target = f"m{MERCHANTS - 1}"
    stream = Stream(target, "shop", "client", POLICY, Metrics())
    hub.attach(target, stream, None)
    _every_first_event_held(hub)

    await snapshots.open(stream, [])
    await _every_check_answered(check)
    assert not hub.held_back(target)
    assert _queued(stream) == [("snapshot", "ep:5")]  # ep:5 is in it: never after it
    await snapshots.close()


async def test_the_flush_returns_at_once_for_a_merchant_with_nothing_held() -> None:
    hub, check, flush = _wired()
    _every_first_event_held(hub)
    hub.open("quiet")
    await flush("quiet")
    assert hub.held_back(f"m{MERCHANTS - 1}")  # it did not wait for the others' checks
    await check.close()
