"""Job-state snapshots: the `snapshot` frame a stream gets on connect and after resync.

A stream that opens without a Last-Event-ID (or whose id cannot be replayed)
is attached first, so live events queue behind it; then the merchant's job
state and newest durable id are read in one MULTI, and a canary round trip
proves every message published before the read has reached the hub. The
frame goes first (after `resync` if one is due), and queued durable events up
to its id are dropped: the snapshot already holds them; later ones follow, so
nothing is missed or sent twice. After a `resync` of live streams (Redis
reconnected) each stream is held, writing nothing, until the same read answers.

One read per merchant is shared by every stream of it that opens or resyncs
meanwhile (`SingleFlight`), so a reconnect storm costs about one read per
merchant. A merchant without job state gets no frame.

A read is also kept in memory, and a stream that opens later gets it without
a Redis read, while the read still stands for what this process has
delivered: the merchant's hub topic is the same one, with no gap marked since
(`Hub.gap_mark`), no envelope waiting for its check, and the same newest
durable id (`Topic.durable_head`) as when the read was sent and when it
answered (flushed) -- so no durable event was delivered in between or since.
Every durable event after its id then reaches the new stream live, none at or
before it: the no-gap, no-duplicate rule of a read holds. It is kept at most
`_KEPT_S` seconds: what changes the state in Redis without a message this
process delivers (the state expiring, a durable publish on an event not in
`redis.events`) shows within that time. A snapshot served from memory may not
yet hold an event published an instant before the connect that has not
reached this process; that event follows it live.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from redis.exceptions import RedisClusterException, RedisError

from ..fanout.frames import Control, Entry
from ..fanout.hub import Hub
from ..fanout.stream import Stream
from ..metrics import Metrics
from ..runtime import deadlines
from ..runtime.single_flight import SingleFlight
from ..runtime.supervision import stop_tasks
from .catch_up import SNAPSHOT
from .envelopes import Flush
from .history import DurableHistory
from .ids import DurableId
from .jobs import snapshot_payload

__all__ = ["Snapshot", "Snapshots"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 3.0
_KEPT_S = 5.0  # a read served from memory at most this long after it was sent
_FAULTS = (RedisError, RedisClusterException, OSError, TimeoutError)


class Snapshot(NamedTuple):
    """A merchant's job state as one frame, and the newest durable id it was read at."""

    head: DurableId
    frame: Entry


_Position = tuple[int, "DurableId | None"]  # the topic's gap mark and newest durable id


class _Kept(NamedTuple):
    """A read that still stands while the merchant's topic is at `position`."""

    position: _Position
    snapshot: Snapshot | None
    until: float  # time.monotonic()


class Snapshots:
    def __init__(
        self,
        history: DurableHistory,
        flush: Flush,
        hub: Hub,
        metrics: Metrics,
        *,
        job_key: str,
        jobs_kept: int = 100,
    ) -> None:
        self._history = history
        self._flush = flush
        self._hub = hub
        self._metrics = metrics
        self._job_key = job_key
        self._jobs_kept = jobs_kept
        self._reads: SingleFlight[str, Snapshot | None] = SingleFlight(self._read)
        self._holds = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._kept: dict[str, _Kept] = {}
        self.clock: Callable[[], float] = time.monotonic

    async def open(self, stream: Stream, first: list[Control]) -> bool:
        """Put `first` (a resync, or nothing) and the snapshot before what queued
        live on a stream just attached; False when there is no snapshot to send."""
        kept = self._kept.get(stream.merchant_id)
        if kept is not None and self._stands(stream.merchant_id, kept):
            snapshot = kept.snapshot  # no await since attach: nothing can come between
        else:
            try:
                snapshot = await self._reads(stream.merchant_id)
            except _FAULTS as exc:
                log.warning("snapshot read failed merchant=%s: %s", stream.merchant_id,
                            type(exc).__name__)
                return False
        if snapshot is None:
            return False
        if stream.put_first(first, snapshot.frame, snapshot.head):
            self._metrics.snapshots += 1
        return True

    def after_resync(self, merchant_ids: Iterable[str]) -> None:
        """Streams just sent `resync`: hold each until its merchant's snapshot is read."""
        for merchant_id in merchant_ids:
            streams = [s for s in self._hub.subscribers(merchant_id) if isinstance(s, Stream)]
            if not streams:
                continue
            number = next(self._holds)
            for stream in streams:
                stream.hold(number)
            task = asyncio.ensure_future(self._release(merchant_id, streams, number))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, merchant_id: str, streams: list[Stream], number: int) -> None:
        snapshot = None
        try:
            snapshot = await self._reads(merchant_id)
        except _FAULTS as exc:  # Redis went again: the next reconnect resyncs once more
            log.warning("snapshot read failed merchant=%s: %s", merchant_id, type(exc).__name__)
        finally:
            self._release_all(streams, number, snapshot)

    def _release_all(self, streams: list[Stream], number: int, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            for stream in streams:
                stream.release(number)
            return
        # a frame of its own: a stream that opened meanwhile may have queued the same
        # read's frame (before the resync); it must get one after the resync too
        frame = self._hub.again(snapshot.frame)
        self._metrics.snapshots += sum(stream.release(number, frame, snapshot.head)
                                       for stream in streams)

    async def _read(self, merchant_id: str) -> Snapshot | None:
        """One state read, flushed, as a frame (None: no job state); kept in memory
        when no durable event of the merchant was delivered while it was read. The
        read and its flush share one deadline: the streams it holds write nothing."""
        sent_at, before = self.clock(), self._position(merchant_id)
        gap_mark = self._hub.gap_mark(merchant_id)
        work = asyncio.ensure_future(self._read_flushed(merchant_id))
        snapshot = await deadlines.wait(work, _READ_TIMEOUT_S)
        unchanged = before is not None and self._position(merchant_id) == before
        if snapshot is not None:
            # flushed: the merchant's next durable event continues the snapshot's id. An
            # event under that id or below it is then checked: a failover that lost the
            # write the snapshot ends at and gave its id to another event resyncs first
            self._hub.learn_head(merchant_id, snapshot.head, gap_mark)
        after = self._position(merchant_id)
        if unchanged and after is not None:
            self._keep(merchant_id, _Kept(after, snapshot, sent_at + _KEPT_S))
        else:
            self._kept.pop(merchant_id, None)
        return snapshot

    async def _read_flushed(self, merchant_id: str) -> Snapshot | None:
        head, records = await self._history.read_jobs(merchant_id)
        payload = None if head is None else snapshot_payload(
            records, head.epoch, self._job_key, self._jobs_kept)
        if head is None or payload is None:
            # without job state there is nothing to flush for: a durable event published
            # before the read would be in it, and one published after moves the topic's head
            return None
        await self._flush(merchant_id)  # every message published before the read is queued
        return Snapshot(head, self._hub.entry(SNAPSHOT, payload, str(head)))

    def _position(self, merchant_id: str) -> _Position | None:
        """Where the merchant's topic stands (None: no topic, or an envelope under check)."""
        mark = self._hub.gap_mark(merchant_id)
        if mark < 0:
            return None
        topic = self._hub.open(merchant_id)  # exists: it has a mark
        if topic.pending is not None:
            return None
        return mark, topic.durable_head

    def _stands(self, merchant_id: str, kept: _Kept) -> bool:
        """Whether a kept read may still be served (else it is forgotten)."""
        if self.clock() < kept.until and self._position(merchant_id) == kept.position:
            return True
        del self._kept[merchant_id]
        return False

    def _keep(self, merchant_id: str, kept: _Kept) -> None:
        self._kept[merchant_id] = kept
        if len(self._kept) > 2 * len(self._hub) + 64:  # forget merchants no longer held
            now = self.clock()
            self._kept = {
                mid: k for mid, k in self._kept.items()
                if now < k.until and self._hub.gap_mark(mid) == k.position[0]
            }

    async def close(self) -> None:
        self._kept.clear()
        await stop_tasks([*self._reads.tasks(), *self._tasks])
