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
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from redis.exceptions import RedisClusterException, RedisError

from ..frames import Control, Entry
from ..hub import Hub
from ..metrics import Metrics
from ..runtime import deadlines
from ..runtime.single_flight import SingleFlight
from ..runtime.supervision import stop_tasks
from ..stream import Stream
from .history import DurableHistory
from .ids import DurableId
from .jobs import snapshot_data

__all__ = ["Snapshot", "Snapshots"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 3.0
_FAULTS = (RedisError, RedisClusterException, OSError, TimeoutError)


class Snapshot(NamedTuple):
    """A merchant's job state as one frame, and the newest durable id it was read at."""

    head: DurableId
    frame: Entry


class Snapshots:
    def __init__(
        self,
        history: DurableHistory,
        flush: Callable[[], Awaitable[float]],
        hub: Hub,
        metrics: Metrics,
        *,
        job_key: str,
    ) -> None:
        self._history = history
        self._flush = flush
        self._hub = hub
        self._metrics = metrics
        self._job_key = job_key
        self._reads: SingleFlight[str, Snapshot | None] = SingleFlight(self._read)
        self._holds = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, stream: Stream, first: list[Control]) -> bool:
        """Put `first` (a resync, or nothing) and the snapshot before what queued
        live on a stream just attached; False when there is no snapshot to send."""
        try:
            snapshot = await self._reads(stream.merchant_id)
        except _FAULTS as exc:
            log.warning("snapshot read failed merchant=%s: %s", stream.merchant_id,
                        type(exc).__name__)
            return False
        if snapshot is None:
            return False
        stream.put_first(first, snapshot.frame, snapshot.head)
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
            for stream in streams:
                if snapshot is None:
                    stream.release(number)
                else:
                    stream.release(number, snapshot.frame, snapshot.head)
                    self._metrics.snapshots += 1

    async def _read(self, merchant_id: str) -> Snapshot | None:
        """One state read, flushed, as a frame (None: no job state)."""
        work = asyncio.ensure_future(self._history.read_jobs(merchant_id))
        head, records = await deadlines.wait(work, _READ_TIMEOUT_S)
        if head is None:
            return None
        data = snapshot_data(records, head.epoch, self._job_key)
        if data is None:
            return None
        await self._flush()  # every message published before the read is in the queues
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return Snapshot(head, self._hub.entry("snapshot", payload, str(head)))

    async def close(self) -> None:
        await stop_tasks([*self._reads.tasks(), *self._tasks])
