"""Unit tests of gateway.fanout.stream.Stream against a fake transport/protocol/writer.

The fake models what the stream relies on: ``protocol.writing_paused`` (the
kernel buffer is full), ``transport.write``/``abort``/``is_closing`` and
``writer.drain()`` (returns once the socket has drained).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from support import wait_for

from gateway.durable.ids import DurableId
from gateway.fanout.frames import Control, Entry
from gateway.fanout.stream import Stream
from gateway.fanout.stream_policy import HOLD_ALLOWANCE, CloseReason, QueuePolicy
from gateway.metrics import Metrics


class FakeProtocol:
    def __init__(self) -> None:
        self.writing_paused = False


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.aborted, "write after abort"
        self.writes.append(bytes(data))  # a real transport copies memoryviews too

    def abort(self) -> None:
        self.aborted = True
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class FakeWriter:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.protocol = FakeProtocol()
        self._drained = asyncio.Event()
        self._drained.set()

    def pause(self) -> None:
        self.protocol.writing_paused = True
        self._drained.clear()

    def resume(self) -> None:
        self.protocol.writing_paused = False
        self._drained.set()

    async def drain(self) -> None:
        await self._drained.wait()


_seq = iter(range(1, 10**9))


def entry(event: str, payload: object) -> Entry:
    seq = next(_seq)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Entry(seq, f"ep-{seq}", event, data)


def make_stream(max_queue: int = 100, max_queue_bytes: int = 1 << 30) -> tuple[Stream, Metrics]:
    metrics = Metrics()
    policy = QueuePolicy(max_queue, frozenset({"progress"}), "jobId", max_queue_bytes)
    return Stream("mid", "s.myshopify.com", "127.0.0.1", policy, metrics), metrics


async def poll(pred: Callable[[], object], what: str = "") -> None:
    """support.wait_for at the pace of these in-process tests (the stream runs in
    this loop: a millisecond is many of its turns)."""
    await wait_for(pred, timeout=2.0, interval=0.001, message=what)


def frames(data: bytes) -> list[bytes]:
    return [b + b"\n\n" for b in data.split(b"\n\n") if b]


def ids_in(data: bytes) -> list[str]:
    return [line[4:].decode() for line in data.split(b"\n") if line.startswith(b"id: ")]


async def running(stream: Stream, writer: FakeWriter) -> asyncio.Task[str]:
    """Bind and start run(); return once the stream is idle in direct-write mode."""
    stream.bind(writer, chunked=False)
    task = asyncio.create_task(stream.run())
    await poll(lambda: stream._wake is not None and stream._queue is None, what="idle")
    return task


async def finish(task: asyncio.Task[str]) -> None:
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def test_direct_write_when_not_paused() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    e = entry("stage", {"n": 1})
    stream.deliver(e)
    # synchronous: written before any await
    assert writer.transport.writes == [bytes(e.wire[0])]
    assert stream.queued == 0
    await finish(task)


async def test_chunked_binding_writes_chunked_bytes() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    stream.bind(writer, chunked=True)
    task = asyncio.create_task(stream.run())
    await poll(lambda: stream._queue is None)
    e = entry("stage", {"n": 1})
    stream.deliver(e)
    assert writer.transport.writes == [e.wire[1]]
    await finish(task)


async def test_queues_when_paused_and_run_drains_on_resume() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    sent = [entry("stage", {"n": i}) for i in range(5)]
    for e in sent:
        stream.deliver(e)
    assert stream.queued == 5
    assert writer.transport.writes == []
    writer.resume()
    await poll(lambda: stream.queued == 0, what="drained")
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in sent)
    # back to direct writes once caught up
    await poll(lambda: stream._queue is None and stream._wake is not None)
    e = entry("stage", {"n": 99})
    stream.deliver(e)
    assert writer.transport.writes[-1] == bytes(e.wire[0])
    await finish(task)


async def test_events_before_bind_are_queued_then_flushed() -> None:
    stream, _ = make_stream()
    early = [entry("stage", {"n": i}) for i in range(3)]
    for e in early:
        stream.deliver(e)
    assert stream.queued == 3
    writer = FakeWriter()
    stream.bind(writer, chunked=False)
    task = asyncio.create_task(stream.run())
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in early)
    await finish(task)


async def test_coalescing_keeps_newest_at_the_end_preserving_others() -> None:
    stream, metrics = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    a1 = entry("progress", {"jobId": "A", "pct": 10})
    s1 = entry("stage", {"jobId": "A", "stage": "x"})
    b1 = entry("progress", {"jobId": "B", "pct": 10})
    a2 = entry("progress", {"jobId": "A", "pct": 20})
    b2 = entry("progress", {"jobId": "B", "pct": 20})
    a3 = entry("progress", {"jobId": "A", "pct": 30})
    for e in (a1, s1, b1, a2, b2, a3):
        stream.deliver(e)
    assert stream.queued == 3
    assert metrics.coalesced == 3
    writer.resume()
    await poll(lambda: stream.queued == 0)
    # order of the survivors is publication order: ids keep increasing
    assert writer.transport.data == bytes(s1.wire[0]) + bytes(b2.wire[0]) + bytes(a3.wire[0])
    got = ids_in(writer.transport.data)
    assert got == sorted(got, key=lambda i: int(i.rpartition("-")[2]))
    await finish(task)


async def test_completion_and_error_never_coalesced() -> None:
    stream, metrics = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    sent = [
        entry("completion", {"jobId": "A"}),
        entry("completion", {"jobId": "A"}),
        entry("error", {"jobId": "A"}),
        entry("error", {"jobId": "A"}),
        entry("stage", {"jobId": "A"}),
        entry("stage", {"jobId": "A"}),
    ]
    for e in sent:
        stream.deliver(e)
    assert stream.queued == len(sent)
    assert metrics.coalesced == 0
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in sent)
    await finish(task)


async def test_progress_then_completion_keeps_both_in_order() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    p1 = entry("progress", {"jobId": "A", "pct": 50})
    done = entry("completion", {"jobId": "A"})
    p2 = entry("progress", {"jobId": "A", "pct": 100})
    for e in (p1, done, p2):
        stream.deliver(e)
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == bytes(done.wire[0]) + bytes(p2.wire[0])
    await finish(task)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'"A"', b'["A"]', b'{"other": "A"}', b'{"jobId": null}', b'{"jobId": true}'],
)
async def test_non_json_or_keyless_progress_never_coalesced(payload: bytes) -> None:
    stream, metrics = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    sent = [entry("progress", payload) for _ in range(4)]
    for e in sent:
        stream.deliver(e)
    assert stream.queued == 4
    assert metrics.coalesced == 0
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in sent)
    await finish(task)


async def test_coalescing_only_while_queued() -> None:
    """An event already written is not 'replaced': the newer one is simply sent."""
    stream, metrics = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    a1 = entry("progress", {"jobId": "A", "pct": 1})
    stream.deliver(a1)  # written directly
    writer.pause()
    a2 = entry("progress", {"jobId": "A", "pct": 2})
    stream.deliver(a2)
    assert stream.queued == 1
    assert metrics.coalesced == 0
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == bytes(a1.wire[0]) + bytes(a2.wire[0])
    await finish(task)


async def test_cut_past_max_queue_with_slow_client() -> None:
    stream, metrics = make_stream(max_queue=3)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    for i in range(3):
        stream.deliver(entry("stage", {"n": i}))
    assert stream.close_reason is None
    assert not writer.transport.aborted
    stream.deliver(entry("stage", {"n": 3}))  # max_queue + 1
    assert stream.close_reason == CloseReason.SLOW_CLIENT == "slow_client"
    assert writer.transport.aborted
    assert metrics.slow_client_disconnects == 1
    assert stream.queued == 0  # memory released
    # further deliveries are dropped, not queued, not written
    stream.deliver(entry("stage", {"n": 4}))
    assert stream.queued == 0 and writer.transport.writes == []
    assert await asyncio.wait_for(task, 2) == "slow_client"
    assert metrics.slow_client_disconnects == 1


async def test_cut_past_the_byte_budget_before_max_queue() -> None:
    big = b"x" * 10_000
    stream, metrics = make_stream(max_queue=1000, max_queue_bytes=25_000)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    stream.deliver(entry("stage", big))
    stream.deliver(entry("stage", big))
    assert stream.close_reason is None  # ~20 KB queued: within the budget
    stream.deliver(entry("stage", big))  # ~30 KB: over it, though only 3 events
    assert stream.close_reason == CloseReason.SLOW_CLIENT
    assert writer.transport.aborted and stream.queued == 0
    assert await asyncio.wait_for(task, 2) == "slow_client"
    assert metrics.slow_client_disconnects == 1


async def test_one_event_larger_than_the_budget_may_wait_alone() -> None:
    stream, _ = make_stream(max_queue=1000, max_queue_bytes=4_000)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    stream.deliver(entry("stage", b"x" * 10_000))  # over the budget, but alone
    assert stream.close_reason is None
    writer.resume()
    await poll(lambda: stream.queued == 0, what="the big event flushed")
    writer.pause()
    stream.deliver(entry("stage", b"x" * 10_000))
    stream.deliver(entry("stage", b"y"))  # anything behind it: over the budget, cut
    assert stream.close_reason == CloseReason.SLOW_CLIENT
    assert await asyncio.wait_for(task, 2) == "slow_client"


async def test_flushed_and_coalesced_bytes_leave_the_budget() -> None:
    """A client that keeps catching up is never cut, however many bytes pass through."""
    payload = {"jobId": "j", "pad": "x" * 5_000}
    stream, _ = make_stream(max_queue=1000, max_queue_bytes=12_000)
    writer = FakeWriter()
    task = await running(stream, writer)
    for _ in range(20):
        writer.pause()
        for _ in range(10):  # coalesced down to one queued progress event
            stream.deliver(entry("progress", payload))
        stream.deliver(entry("stage", {"n": 1}))
        writer.resume()
        await poll(lambda: stream.queued == 0, what="queue flushed")
    assert stream.close_reason is None
    task.cancel()


async def test_coalescing_keeps_a_lagging_client_under_max_queue() -> None:
    stream, metrics = make_stream(max_queue=3)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    for i in range(100):
        stream.deliver(entry("progress", {"jobId": "A", "pct": i}))
    for i in range(100):
        stream.deliver(entry("progress", {"jobId": "B", "pct": i}))
    assert stream.close_reason is None
    assert stream.queued == 2
    assert metrics.slow_client_disconnects == 0
    await finish(task)


async def test_completions_still_count_towards_max_queue() -> None:
    stream, metrics = make_stream(max_queue=2)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    for _ in range(3):
        stream.deliver(entry("completion", {"jobId": "A"}))
    assert stream.close_reason == "slow_client"
    assert metrics.slow_client_disconnects == 1
    assert await asyncio.wait_for(task, 2) == "slow_client"


async def test_close_with_final_flushes_queue_then_final() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    sent = [entry("stage", {"n": i}) for i in range(3)]
    for e in sent:
        stream.deliver(e)
    final = Control("shutdown", {"reason": "shutdown"}, retry_ms=1234)
    stream.close(CloseReason.SHUTDOWN, final)
    assert not task.done()
    # events after close are not sent
    stream.deliver(entry("stage", {"n": 99}))
    writer.resume()
    assert await asyncio.wait_for(task, 2) == "shutdown"
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in sent) + bytes(final.wire[0])
    assert not writer.transport.aborted


async def test_close_with_final_when_idle_writes_final() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    final = Control("revoked", {"reason": "revoked"})
    stream.close(CloseReason.REVOKED, final)
    assert await asyncio.wait_for(task, 2) == "revoked"
    assert writer.transport.data == bytes(final.wire[0])
    # a second close changes nothing
    stream.close(CloseReason.SHUTDOWN, Control("shutdown", {"reason": "shutdown"}))
    assert stream.close_reason == "revoked"


async def test_control_frames_are_queued_in_order_not_coalesced() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    c1 = Control("resync", {"reason": "history_gap"})
    e1 = entry("progress", {"jobId": "A"})
    c2 = Control("resync", {"reason": "redis_reconnected"})
    for e in (c1, e1, c2):
        stream.deliver(e)
    assert stream.queued == 3
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == bytes(c1.wire[0]) + bytes(e1.wire[0]) + bytes(c2.wire[0])
    await finish(task)


async def test_run_returns_client_gone_when_transport_closes() -> None:
    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    stream.deliver(entry("stage", {"n": 1}))
    writer.transport.closing = True
    writer.resume()
    assert await asyncio.wait_for(task, 2) == "client_gone"


async def test_large_queue_is_written_in_bounded_batches() -> None:
    stream, _ = make_stream(max_queue=1000)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()
    big = [entry("stage", b"x" * 10240) for _ in range(100)]
    for e in big:
        stream.deliver(e)
    writer.resume()
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in big)
    assert len(writer.transport.writes) > 1
    assert max(len(w) for w in writer.transport.writes) < 512 * 1024
    await finish(task)


async def test_a_replay_longer_than_max_queue_is_not_cut() -> None:
    stream, _ = make_stream(max_queue=3)
    replay = [entry("stage", {"n": i}) for i in range(10)]
    stream.replay(replay)  # queued before the stream is bound to its socket
    assert stream.close_reason is None
    writer = FakeWriter()
    task = await running(stream, writer)
    await poll(lambda: stream.queued == 0)
    assert writer.transport.data == b"".join(bytes(e.wire[0]) for e in replay)
    task.cancel()


async def test_a_replay_gives_way_to_what_queued_live_meanwhile() -> None:
    """A Redis replay read while live events queued: durable ids already queued live
    keep their live place, after a plain event that was published before them."""

    def durable(n: int) -> Entry:
        return Entry(1000 + n, f"ep:{n}", "stage", b"%d" % n)

    stream, _ = make_stream()
    d5, d6 = durable(5), durable(6)
    plain = entry("stage", "plain")
    for live in (plain, d5, d6):  # attached, not yet writing: these queue
        stream.deliver(live)
    replay = [durable(3), durable(4), durable(5), durable(6)]  # read from Redis
    assert stream.replay_before_live(replay, DurableId("ep", 2)) == 2
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        assert ids_in(writer.transport.data) == ["ep:3", "ep:4", plain.id, "ep:5", "ep:6"]
    finally:
        await finish(task)


@pytest.mark.parametrize("after_resync", [False, True])
async def test_plain_events_older_than_a_snapshot_do_not_move_the_last_event_id(
    after_resync: bool,
) -> None:
    """A plain event published before durable events the snapshot holds follows the
    snapshot without its id: a reconnect must resume after the snapshot, not from
    the plain event's place in the ring (that would replay what the snapshot held)."""

    def durable(n: int) -> Entry:
        return Entry(4000 + n, f"ep:{n}", "stage", b"%d" % n)

    stream, _ = make_stream()
    resync = Control("resync", {"reason": "redis_reconnected"})
    if after_resync:
        stream.deliver(resync)
        stream.hold(1)
    plain_early, plain_late = entry("stage", "early"), entry("stage", "late")
    for live in (plain_early, durable(4), durable(5), plain_late, durable(6)):
        stream.deliver(live)  # queued while the state is read
    snapshot = Entry(4100, "ep:5", "snapshot", b'{"jobs":[]}')
    if after_resync:
        stream.release(1, snapshot, DurableId("ep", 5))
    else:
        stream.put_first([resync], snapshot, DurableId("ep", 5))
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        await poll(lambda: b"ep:6" in writer.transport.data, what="written")
        data = writer.transport.data
        assert data.index(b"resync") < data.index(b"snapshot") < data.index(b"early")
        assert ids_in(data) == ["ep:5", plain_late.id, "ep:6"]
        assert b"\n\nevent: stage\ndata: \"early\"\n\n" in data  # delivered, without its id
    finally:
        await finish(task)


async def test_a_held_stream_writes_nothing_until_its_snapshot_then_only_newer_events() -> None:
    def durable(n: int) -> Entry:
        return Entry(2000 + n, f"ep:{n}", "stage", b"%d" % n)

    stream, _ = make_stream()
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        resync = Control("resync", {"reason": "redis_reconnected"})
        stream.deliver(resync)  # written at once: the hold begins after it
        stream.hold(1)
        plain = entry("stage", "plain")
        for live in (durable(4), plain, durable(5)):  # arrive while the state is read
            stream.deliver(live)
        await asyncio.sleep(0)
        assert b"ep:4" not in writer.transport.data  # held
        stream.release(0)  # an earlier hold's answer: ignored
        snapshot = Entry(3000, "ep:4", "snapshot", b'{"jobs":[]}')
        stream.release(1, snapshot, DurableId("ep", 4))
        await poll(lambda: b"ep:5" in writer.transport.data, what="released")
        data = writer.transport.data
        assert data.index(b"resync") < data.index(b"snapshot")
        assert ids_in(data) == ["ep:4", plain.id, "ep:5"]  # the snapshot's id, then newer
        assert data.count(b"event: stage\ndata: 4") == 0  # ep:4 is in the snapshot
    finally:
        await finish(task)


async def test_a_resync_put_first_during_a_hold_stays_before_the_held_events() -> None:
    """A stream still opening (its history read failed) gets `resync history_gap` first
    while a broker resync holds it for a snapshot: the release must not move the
    opening's resync behind events queued before the hold (chaos, cluster seed 2002:
    a tab resuming from :422 got :447-:454 before its resync: a silent gap)."""

    def durable(n: int) -> Entry:
        return Entry(5000 + n, f"ep:{n}", "stage", b"%d" % n)

    stream, _ = make_stream()
    early = [durable(447), durable(448)]
    for live in early:  # queued live while the opening read the history
        stream.deliver(live)
    reconnected = Control("resync", {"reason": "redis_reconnected"})
    stream.deliver(reconnected)
    stream.hold(1)  # the broker's resync: the merchant's snapshot is being read
    gap = Control("resync", {"reason": "history_gap"})
    stream.put_first([gap])  # the opening's answer: its replay could not be had
    stream.deliver(durable(456))
    stream.release(1)
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        await poll(lambda: b"ep:456" in writer.transport.data, what="written")
        data = writer.transport.data
        assert data.index(b"history_gap") < data.index(b"ep:447"), data
        assert ids_in(data) == ["ep:447", "ep:448", "ep:456"]
    finally:
        await finish(task)


async def test_a_replay_that_lands_during_a_hold_stays_before_the_held_events() -> None:
    """A reconnect's history read answers while a broker resync holds the stream for a
    snapshot: the replay goes before the live events queued before the hold, and the
    release must not treat it as queued after the hold (the snapshot would then drop
    it as older than its head: a silent gap). Chaos, cluster seed 2102: a tab resuming
    from :891 got :896, then its resync, and never :892-:895."""

    def durable(n: int) -> Entry:
        return Entry(6000 + n, f"ep:{n}", "stage", b"%d" % n)

    stream, _ = make_stream()
    stream.deliver(durable(896))  # queued live while the opening read the history
    stream.deliver(Control("resync", {"reason": "redis_reconnected"}))
    stream.hold(1)  # the broker's resync: the merchant's snapshot is being read
    replay = [Entry(6100 + n, f"ep:{n}", "stage", b"%d" % n) for n in range(892, 897)]
    assert stream.replay_before_live(replay, DurableId("ep", 891)) == 4  # :896 queued live
    stream.release(1, Entry(6200, "ep:895", "snapshot", b'{"jobs":[]}'), DurableId("ep", 895))
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        await poll(lambda: b"snapshot" in writer.transport.data, what="written")
        data = writer.transport.data
        assert ids_in(data) == ["ep:892", "ep:893", "ep:894", "ep:895", "ep:896", "ep:895"]
        assert data.index(b"ep:896") < data.index(b"redis_reconnected") < data.index(b"snapshot")
    finally:
        await finish(task)


async def test_a_held_stream_may_queue_past_its_limit_but_not_without_bound() -> None:
    """A hold keeps a reader that is not behind from writing while the merchant's
    snapshot is read: events queued meanwhile, past `max_queue`, do not cut it; its
    release lets it catch up. The allowance is bounded: past it, the stream is cut."""
    stream, metrics = make_stream(max_queue=5)
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        stream.hold(1)
        held = [entry("stage", {"n": n}) for n in range(5 * HOLD_ALLOWANCE)]
        for e in held:
            stream.deliver(e)
        assert stream.close_reason is None and metrics.slow_client_disconnects == 0
        stream.release(1)
        await poll(lambda: held[-1].id.encode() in writer.transport.data, what="caught up")
        assert ids_in(writer.transport.data) == [e.id for e in held]
        stream.hold(2)
        for _ in range(5 * HOLD_ALLOWANCE + 1):
            stream.deliver(entry("stage", {}))
        assert stream.close_reason == CloseReason.SLOW_CLIENT
    finally:
        await finish(task)


async def test_a_hold_keeps_the_allowance_of_a_replay_still_queued() -> None:
    """A reconnect's replay may exceed `max_queue` until the stream catches up; a
    resync's hold and release before it drained used to clamp that allowance to the
    hold's, so the next live event cut the client as slow."""
    stream, metrics = make_stream(max_queue=5)
    stream.replay([entry("stage", {"n": n}) for n in range(30)])  # before the bind
    stream.hold(1)
    stream.deliver(entry("stage", {"live": 1}))
    stream.release(1, Entry(10**6, "ep:1", "snapshot", b'{"jobs":[]}'), DurableId("ep", 1))
    stream.deliver(entry("stage", {"live": 2}))
    assert stream.close_reason is None and metrics.slow_client_disconnects == 0
    writer = FakeWriter()
    task = await running(stream, writer)
    try:
        await poll(lambda: stream.queued == 0, what="caught up")
        assert len(ids_in(writer.transport.data)) == 33
    finally:
        await finish(task)


async def test_a_shutdown_waits_for_a_held_snapshot_only_a_moment() -> None:
    """A shutdown during a hold keeps it for the snapshot; a read slower than a moment
    gives way, so the final frame still goes out within the drain budget (it used to
    wait for the read, and a slow one made the drain cut the stream, without its final
    frame). A revocation drops the hold at once: a revoked merchant gets no more state."""
    for reason, event in ((CloseReason.SHUTDOWN, "shutdown"), (CloseReason.REVOKED, "revoked")):
        stream, _ = make_stream(max_queue=5)
        writer = FakeWriter()
        task = await running(stream, writer)
        stream.deliver(Control("resync", {"reason": "redis_reconnected"}))
        stream.hold(1)
        stream.close(reason, Control(event, {"reason": event}))
        assert await asyncio.wait_for(task, 2) == reason
        assert ids_in(writer.transport.data) == []
        final = b'data: {"reason":"%s"}' % event.encode()
        assert writer.transport.data.rstrip(b"\n").endswith(final)
        assert not stream.release(1, Entry(10**6, "ep:1", "snapshot", b"{}"), DurableId("ep", 1))


async def test_holds_one_after_another_never_let_a_stalled_reader_queue_more() -> None:
    """A reader that reads nothing while resync after resync holds it: each release
    lets what the hold queued drain, but the next hold may not add its allowance on
    top. Past HOLD_ALLOWANCE times `max_queue` queued in all, it is cut."""
    stream, _ = make_stream(max_queue=5)
    writer = FakeWriter()
    task = await running(stream, writer)
    writer.pause()  # the reader has stopped reading
    try:
        stream.hold(1)
        for _ in range(5 * HOLD_ALLOWANCE):  # the most a hold may queue
            stream.deliver(entry("stage", {}))
        stream.release(1)
        assert stream.close_reason is None
        stream.hold(2)  # nothing drained since: one more event is one too many
        stream.deliver(entry("stage", {}))
        assert stream.close_reason == CloseReason.SLOW_CLIENT
    finally:
        await finish(task)
