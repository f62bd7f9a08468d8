"""Replay of durable events from the Redis history, for ids this process does not hold.

A reconnect whose Last-Event-ID is durable but not in the in-process ring (the
ring is the cache in front of Redis: another process issued it, or this one
restarted) is served here. The stream is attached first, so live events queue
behind it; then the history is read, and a canary round trip on the subscriber
connection proves that every message published before the read has reached the
hub; then replay and live are merged by id (stream.replay_before_live).

Concurrent replays of one merchant share one read: a read collects every replay
that arrives before it is sent, and at most one read per merchant is in flight,
so a reconnect storm costs a few reads, not one per tab.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .broker.history import DurableHistory
from .durable import DurableEvent, DurableId, HistorySnapshot
from .hub import Hub
from .metrics import Metrics
from .stream import Stream
from .supervision import stop_tasks

__all__ = ["DurableReplay"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 3.0


class _Read:
    __slots__ = ("future", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.future: asyncio.Future[HistorySnapshot] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[HistorySnapshot]) -> None:
    if not future.cancelled():
        future.exception()  # a read nobody waits for any more is not an error to print


class DurableReplay:
    def __init__(
        self,
        history: DurableHistory,
        flush: Callable[[], Awaitable[float]],
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self._history = history
        self._hub = hub
        self._flush = flush
        self._metrics = metrics
        self._collecting: dict[str, _Read] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def replay_into(self, stream: Stream, last: DurableId) -> int | None:
        """Queue the durable events after `last` ahead of live ones; how many, or None
        when the history cannot bridge to `last` (or cannot be read: the client resyncs).

        The stream is attached and not yet writing, so live events queue meanwhile;
        the durable ones among them that the history read already holds are dropped.
        """
        try:
            events = await self.after(stream.merchant_id, last)
        except Exception as exc:  # Redis down or slow
            merchant, fault = stream.merchant_id, type(exc).__name__
            log.warning("history read failed merchant=%s: %s", merchant, fault)
            return None
        if events is None:
            return None
        newest = events[-1].id.offset if events else last.offset

        def is_live(entry: object) -> bool:
            durable = DurableId.parse(getattr(entry, "id", None))
            return durable is None or durable.epoch != last.epoch or durable.offset > newest

        entries = [self._hub.entry(e.event, e.payload, str(e.id)) for e in events]
        stream.replay_before_live(entries, is_live)
        self._metrics.replayed["redis"] += len(entries)
        return len(entries)

    async def after(self, merchant_id: str, last: DurableId) -> list[DurableEvent] | None:
        """The durable events after `last`; None when the history cannot bridge to it.

        Call it only once the stream is attached: the read it joins is sent later.
        Raises on a Redis fault.
        """
        read = self._collecting.get(merchant_id)
        if read is None or read.sent:
            read = self._collecting[merchant_id] = _Read()
            task = asyncio.create_task(self._run(merchant_id, read), name="history-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        snapshot = await asyncio.shield(read.future)
        return snapshot.after(last)

    async def _run(self, merchant_id: str, read: _Read) -> None:
        previous = self._in_flight.get(merchant_id)
        if previous is not None:
            await asyncio.wait({previous})  # arrivals meanwhile join this read
        else:
            await asyncio.sleep(0)
        read.sent = True
        if self._collecting.get(merchant_id) is read:
            del self._collecting[merchant_id]
        task = asyncio.current_task()
        assert task is not None
        self._in_flight[merchant_id] = task
        try:
            self._metrics.history_reads += 1
            async with asyncio.timeout(_READ_TIMEOUT_S):
                snapshot = await self._history.read_all(merchant_id)
                await self._flush()
            read.future.set_result(snapshot)
        except Exception as exc:
            read.future.set_exception(exc)
        finally:
            if self._in_flight.get(merchant_id) is task:
                del self._in_flight[merchant_id]

    async def close(self) -> None:
        await stop_tasks(list(self._tasks))
