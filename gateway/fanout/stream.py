"""One client's stream: direct writes while the socket keeps up, a bounded queue when not.

`Stream.deliver` is the hot path, called synchronously by the hub for every
event: it writes the shared, pre-framed bytes straight to the transport. Only
when the transport is paused (the kernel buffer is full) does the stream queue;
a queued `coalesce` event with the same job replaces the older one, and a queue
that still grows past `max_queue` events or `max_queue_bytes` bytes cuts the
client (`slow_client`). `run` is the stream's single loop: it flushes the queue
as the socket drains and ends on close, whatever the reason. A replay or a
snapshot meets live events in the queue (`replay_before_live`, `put_first`,
`hold`/`release`, by the rules of `durable/catch_up.py`) before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

from ..durable.catch_up import before_live, with_snapshot
from ..durable.ids import DurableId
from ..metrics import Metrics
from ..web.writer import PayloadWriter, WriterProtocol
from .frames import HEARTBEAT, Control, Deliverable, Entry, take_batch
from .stream_policy import ABORTING, CloseReason, QueuePolicy

__all__ = ["Stream"]

log = logging.getLogger(__name__)

_BATCH_BYTES = 256 * 1024
_CLOSING_HOLD_S = 0.3  # a shutdown waits this long at most for a held snapshot


class Stream:
    __slots__ = (
        "_chunked", "_held", "_jobs", "_policy", "_protocol", "_queue", "_queued_bytes",
        "_replay_allowance", "_replay_allowance_bytes", "_transport", "_wake", "_writer",
        "client", "close_reason", "merchant_id", "metrics", "shop",
    )

    def __init__(
        self, merchant_id: str, shop: str, client: str, policy: QueuePolicy, metrics: Metrics
    ) -> None:
        self.merchant_id = merchant_id
        self.shop = shop
        self.client = client
        self.metrics = metrics
        self.close_reason: CloseReason | None = None
        self._policy = policy
        self._queue: OrderedDict[int, Deliverable] | None = OrderedDict()
        self._queued_bytes = 0
        self._jobs: dict[tuple[str, str], int] | None = None  # queued coalescing jobs
        self._replay_allowance = 0
        self._replay_allowance_bytes = 0
        self._wake: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: WriterProtocol | None = None
        self._writer: PayloadWriter | None = None
        self._chunked = 0
        # while a snapshot is read after a resync: the keys queued before it, and
        # the hold's number (a later resync's hold replaces an earlier one)
        self._held: tuple[int, set[int]] | None = None

    def bind(self, writer: PayloadWriter, chunked: bool) -> None:
        """Start writing to `writer` (aiohttp's payload writer, headers already sent)."""
        self._writer = writer
        self._transport = writer.transport
        self._protocol = writer.protocol
        self._chunked = int(chunked)
        self._wakeup()

    @property
    def bound(self) -> bool:
        return self._transport is not None

    def deliver(self, entry: Deliverable) -> None:
        """Hand one event to this client without ever waiting for it."""
        transport, protocol = self._transport, self._protocol
        if (
            self._queue is None
            and transport is not None
            and protocol is not None
            and not protocol.writing_paused
        ):
            try:
                transport.write(entry.wire[self._chunked])
            except RuntimeError:  # uvloop: the client left; its handler is being cancelled
                self.close(CloseReason.CLIENT_GONE)
            return
        if self.close_reason is None:
            self._enqueue(entry)

    def ping(self) -> None:
        """Heartbeat comment, skipped while events are queued (the socket is busy anyway)."""
        if self._queue is None:
            self.deliver(HEARTBEAT)

    def replay(self, entries: Sequence[Deliverable]) -> None:
        """Queue a reconnect's replay; it may exceed `max_queue` until the stream catches up."""
        self._replay_allowance = len(entries)
        self._replay_allowance_bytes = sum(entry.size for entry in entries)
        for entry in entries:
            self.deliver(entry)

    def replay_before_live(self, entries: Sequence[Entry], last: DurableId) -> int:
        """Put a reconnect's replay, fetched while live events queued (nothing written
        yet), before them (`catch_up.before_live`); how many of `entries` were used."""
        ordered, used = before_live(entries, (self._queue or {}).values(), last)
        return used if self._put_ahead(ordered, used) else 0

    def put_first(
        self, first: Sequence[Control], snapshot: Entry | None = None,
        head: DurableId | None = None,
    ) -> bool:
        """Put `first` (a resync) and a `snapshot` read at `head` before what queued
        live (nothing written yet), as `catch_up.after_snapshot` says; False for a
        closing stream (nothing put)."""
        queued = list((self._queue or {}).values())
        return self._put_ahead(with_snapshot(first, snapshot, head, queued),
                               len(first) + (snapshot is not None))

    def _put_ahead(self, ordered: list[Deliverable], lead: int) -> bool:
        """Queue `ordered` (nothing written yet), whose first `lead` frames went ahead
        of everything queued: during a hold they count as queued before it, as what
        they precede, so its release keeps them ahead of the snapshot (which would
        drop a replay as older). False for a closing stream: what it writes is decided."""
        if self.close_reason is not None:
            return False
        if self._held is not None:
            number, held = self._held
            self._held = (number, held | {entry.seq for entry in ordered[:lead]})
        self._requeue(ordered)
        return True

    def hold(self, number: int) -> None:
        """Write nothing from now until `release(number)`: a snapshot is being read
        (a closing stream is not held: its final frame must go out)."""
        if self.close_reason is not None:
            return
        if self._queue is None:
            self._queue = OrderedDict()
        self._held = (number, set(self._queue))

    def release(
        self, number: int, snapshot: Entry | None = None, head: DurableId | None = None
    ) -> bool:
        """End hold `number`: a `snapshot` read at `head` goes after what was queued
        before it, then what queued meanwhile as `catch_up.after_snapshot` says. False
        when this is not the stream's hold (a later one replaced it, or it was cut)."""
        if self._held is None or self._held[0] != number:
            return False
        queue, held = self._queue or OrderedDict(), self._held[1]
        self._held = None
        granted = self._replay_allowance, self._replay_allowance_bytes  # a replay's, kept
        earlier = [entry for key, entry in queue.items() if key in held]
        later = [entry for key, entry in queue.items() if key not in held]
        self._requeue(with_snapshot(earlier, snapshot, head, later))
        self._replay_allowance, self._replay_allowance_bytes = self._policy.after_hold(
            granted, (self._replay_allowance, self._replay_allowance_bytes))
        return True

    def _requeue(self, entries: list[Deliverable]) -> None:
        self._queue = OrderedDict()
        self._queued_bytes = 0
        self._jobs = None
        if self.close_reason is None:
            self.replay(entries)
        else:  # a hold's release on a closing stream: what it writes before it ends
            self._queue.update((entry.seq, entry) for entry in entries)
            self._queued_bytes = sum(entry.size for entry in entries)
        self._wakeup()

    def close(self, reason: CloseReason, final: Control | None = None) -> None:
        """End the stream; a `final` frame is written after what is already queued
        (alone when the stream has written nothing yet).

        A stream already closing can still be escalated to an aborting reason.
        """
        if self.close_reason is not None and reason not in ABORTING:
            return
        self.close_reason = reason
        if reason is not CloseReason.SHUTDOWN or final is None:
            self._held = None  # (a revoked merchant gets no more of its state)
        if reason in ABORTING:
            self._queue = OrderedDict()  # non-None: deliver() stops writing
            self._queued_bytes = 0
            self._jobs = None
            if self._transport is not None:
                self._transport.abort()
        elif final is not None:
            if self._queue is None or self._transport is None:
                # direct writes; or still opening, nothing written: its live events without
                # the replay still to come would skip some, and the client resumes from the
                # same Last-Event-ID anyway, so the final frame goes alone
                self._queue, self._queued_bytes, self._jobs = OrderedDict(), 0, None
                self._held = None
            # a hold stays, for a moment: the snapshot owed to the `resync` written goes out
            # before the final frame. Else the client resumes by replay, which brings no
            # snapshot, with a job view the resync emptied. A read slower than that gives
            # way: the final frame must go out within the shutdown budget
            if self._held is not None:
                asyncio.get_running_loop().call_later(
                    _CLOSING_HOLD_S, self.release, self._held[0])
            self._queue[final.seq] = final
            self._queued_bytes += final.size
        self._wakeup()

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue else 0

    def _enqueue(self, entry: Deliverable) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = OrderedDict()
        policy = self._policy
        if entry.event in policy.coalesce and isinstance(entry, Entry):
            job = entry.job(policy.job_key)
            if job is not None:
                key = (entry.event, job)
                jobs = self._jobs
                if jobs is None:
                    jobs = self._jobs = {}
                older = jobs.get(key)
                dropped = queue.pop(older, None) if older is not None else None
                if dropped is not None:
                    self._queued_bytes -= dropped.size
                    self.metrics.coalesced += 1
                jobs[key] = entry.seq
                if len(jobs) > 2 * policy.max_queue:  # forget jobs already flushed
                    self._jobs = {k: v for k, v in jobs.items() if v in queue}
        queue[entry.seq] = entry
        self._queued_bytes += entry.size
        allowance = self._replay_allowance, self._replay_allowance_bytes
        # held: not behind, held by the gateway for a snapshot
        if policy.too_far_behind(len(queue), self._queued_bytes, allowance,
                                 self._held is not None):
            self.metrics.slow_client_disconnects += 1
            log.info(
                "slow client cut merchant=%s client=%s queued=%d queued_bytes=%d",
                self.merchant_id,
                self.client,
                len(queue),
                self._queued_bytes,
            )
            self.close(CloseReason.SLOW_CLIENT)
        else:
            self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def run(self) -> CloseReason:
        """Flush queued events as the socket drains; return the close reason."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                queue = self._queue
                if not queue or self._transport is None or self._held is not None:
                    if self.close_reason is not None and (
                            not queue or self._transport is None or self._held is None):
                        return self.close_reason  # (a held final frame waits for release)
                    if queue is not None and self._transport is not None and not self._held:
                        self._queue = None  # caught up: back to direct writes
                        self._queued_bytes = 0
                        self._jobs = None
                        self._replay_allowance = 0
                        self._replay_allowance_bytes = 0
                    queue = None  # an idle stream's frame keeps no emptied queue alive
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                    continue
                if self._transport.is_closing():
                    self.close_reason = self.close_reason or CloseReason.CLIENT_GONE
                    return self.close_reason
                protocol, writer = self._protocol, self._writer
                if protocol is not None and writer is not None and protocol.writing_paused:
                    await writer.drain()
                    continue
                try:
                    data, taken = take_batch(queue, self._chunked, _BATCH_BYTES)
                    self._queued_bytes -= taken
                    self._transport.write(data)
                except RuntimeError:  # uvloop: transport closed under us
                    raise ConnectionResetError from None
        except ConnectionError:
            self.close_reason = self.close_reason or CloseReason.CLIENT_GONE
            return self.close_reason
