"""Resuming a reconnect: what it missed, from the in-process ring or the Redis history.

A plain Last-Event-ID is answered by the ring alone. A durable one found in the
ring is served from it once Redis confirms the history still holds that epoch
(a history deleted or lost means `resync`, as if the ring were not there); one
the ring lacks (another process issued it, or this one restarted) is read from
Redis. Both first ask Redis for the history's newest id (one HMGET shared by a
merchant's concurrent reconnects): an id of another history or past its head
gets `resync` without reading the history.

The stream is attached first, so live events queue behind it; then the history
is read, and a canary round trip on the subscriber connection proves that every
message published before the read has reached the hub; then the replay runs
until the first event that also queued live, and the queue follows in live
order (stream.replay_before_live). Queued events the client already has (it
came from a process whose subscriber was ahead of ours) are dropped there.

Concurrent replays of one merchant share one read (`runtime.single_flight`): a read
gathers every replay that arrives before it starts, and at most one read per
merchant is in flight.
What a read returns is also put in front of the merchant's ring (`Hub.backfill`),
so the merchant's later reconnects bridge from memory: a reconnect storm after a
restart costs about one read per merchant, not one per tab.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisClusterException, RedisError

from ..fanout.frames import Entry
from ..fanout.hub import Hub
from ..fanout.stream import Stream
from ..metrics import Metrics
from ..runtime import deadlines
from ..runtime.single_flight import SingleFlight
from ..runtime.supervision import stop_tasks
from .envelopes import Flush
from .history import DurableHistory
from .ids import DurableId, HistoryHead, HistorySnapshot

__all__ = ["DurableReplay"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 3.0
# what a history read may meet besides a bug: Redis down, slow, or answering an error
_FAULTS = (RedisError, RedisClusterException, OSError, TimeoutError)


class _Fetched:
    """One read: the snapshot and its events as hub entries (framed once, for every replay)."""

    __slots__ = ("entries", "snapshot")

    def __init__(self, snapshot: HistorySnapshot, hub: Hub) -> None:
        self.snapshot = snapshot
        self.entries = [hub.entry(e.event, e.payload, str(e.id)) for e in snapshot.entries]

    def after(self, last: DurableId) -> list[Entry] | None:
        events = self.snapshot.after(last)
        if events is None:
            return None
        return self.entries[len(self.entries) - len(events):]  # the events are a suffix


class DurableReplay:
    def __init__(
        self,
        history: DurableHistory,
        flush: Flush,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self._history = history
        self._hub = hub
        self._flush = flush
        self._metrics = metrics
        self._reads: SingleFlight[str, _Fetched] = SingleFlight(self._read)
        self._heads: SingleFlight[str, HistoryHead] = SingleFlight(self._read_head)

    async def resume(
        self, stream: Stream, last_id: str, held: list[Entry], gap: bool
    ) -> int | None:
        """Queue the events after `last_id` for a stream just attached, whose ring
        answered `held` (or `gap`); how many, or None when the client must resync."""
        durable = DurableId.parse(last_id.strip())
        if durable is None:
            if gap:
                return None
            stream.replay(held)
        elif gap:
            return await self.replay_into(stream, durable)
        elif not await self._still_held(stream.merchant_id, durable):
            return None
        else:
            stream.replay_before_live(held, durable)  # live events may have queued meanwhile
        self._metrics.replayed["memory"] += len(held)
        return len(held)

    async def _still_held(self, merchant_id: str, last: DurableId) -> bool:
        """Whether Redis still holds the history `last` belongs to; True when Redis
        cannot tell: the ring is whole."""
        try:
            head = await self._head(merchant_id)
        except _FAULTS as exc:
            log.warning("history check failed merchant=%s: %s", merchant_id, type(exc).__name__)
            return True
        return head.bridges(last)

    async def _head(self, merchant_id: str) -> HistoryHead:
        """The merchant's newest durable id in Redis (and the ids a failover lost): one
        read, sent after this call
        (an HMGET sent earlier may predate the client's own event), shared by the
        merchant's reconnects arriving meanwhile. Raises on a Redis fault."""
        head = asyncio.ensure_future(self._heads(merchant_id))
        return await deadlines.wait(head, _READ_TIMEOUT_S)

    async def _read_head(self, merchant_id: str) -> HistoryHead:
        return await self._history.read_head(merchant_id)

    async def replay_into(self, stream: Stream, last: DurableId) -> int | None:
        """Queue the durable events after `last` ahead of live ones; how many, or None
        when the history cannot bridge to `last` (or cannot be read: the client resyncs).

        The stream is attached and not yet writing, so live events queue meanwhile;
        the replay stops where they begin (Stream.replay_before_live).
        """
        merchant_id = stream.merchant_id
        if self._hub.gave_again(merchant_id, last):  # the client's event under it was lost
            return None
        try:
            # an id of another history, or past its newest event, is answered without a
            # read: a client looping on such an id costs one shared HMGET, not a read.
            # No HMGET when a read of the merchant is under way anyway (it answers that
            # too), or the id is within the head this process proved: a reconnect storm
            # must not queue thousands of them ahead of its reads
            if not (self._reads.busy(merchant_id) or self._hub.proves(merchant_id, last)
                    or (await self._head(merchant_id)).bridges(last)):
                return None
            in_flight = self._reads.in_flight(merchant_id)
            if in_flight is not None:  # its read backfills the ring: that may answer this one
                await asyncio.wait({in_flight})
                if not in_flight.cancelled() and in_flight.exception() is None \
                        and in_flight.result().snapshot.lost_id(last):
                    return None  # the client's event under that id was lost in a failover
                held = self._hub.held_after(merchant_id, str(last))
                if held is not None:
                    used = stream.replay_before_live(held, last)
                    self._metrics.replayed["memory"] += used
                    return used
            events = await self.after(merchant_id, last)
        except _FAULTS as exc:
            log.warning("history read failed merchant=%s: %s", merchant_id, type(exc).__name__)
            return None
        if events is None:
            return None
        used = stream.replay_before_live(events, last)
        self._metrics.replayed["redis"] += used
        return used

    async def after(self, merchant_id: str, last: DurableId) -> list[Entry] | None:
        """The durable events after `last`, as hub entries; None when the history
        cannot bridge to it.

        Call it only once the stream is attached: the read it joins is sent later.
        Raises on a Redis fault.
        """
        fetched = await self._reads(merchant_id)
        return fetched.after(last)

    async def _read(self, merchant_id: str) -> _Fetched:
        """One history read, flushed, framed, and put in front of the merchant's ring."""
        self._metrics.history_reads += 1
        gap_mark = self._hub.gap_mark(merchant_id)
        snapshot = await deadlines.wait(
            asyncio.ensure_future(self._read_and_flush(merchant_id)), _READ_TIMEOUT_S)
        fetched = _Fetched(snapshot, self._hub)
        self._hub.backfill(merchant_id, fetched.entries, gap_mark)
        if snapshot.epoch is not None and snapshot.head > 0:
            self._hub.learn_head(merchant_id, DurableId(snapshot.epoch, snapshot.head), gap_mark)
        return fetched

    async def _read_and_flush(self, merchant_id: str) -> HistorySnapshot:
        """The history, once every message published before it was read has reached the hub."""
        snapshot = await self._history.read_all(merchant_id)
        await self._flush(merchant_id)
        return snapshot

    async def close(self) -> None:
        await stop_tasks([*self._heads.tasks(), *self._reads.tasks()])

