"""Per-merchant fan-out: event ids, a bounded history ring, the set of open streams.

Pure code: no aiohttp, redis or aiopg. The broker calls `Hub.publish` for each
Redis message; the frame is encoded once and the same `Entry` (frames.py: same
bytes) is offered to every stream of that merchant. `attach` registers a stream and
returns its replay in one synchronous step, so nothing published meanwhile can
fall between replay and live delivery or arrive twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..durable.ids import DurableId
from .frames import Control, Entry
from .topic import Subscriber, Topic
from .verdict import Verify, judge

__all__ = ["Hub", "Subscriber", "Topic", "process_epoch"]

log = logging.getLogger(__name__)


def process_epoch() -> str:
    """A per-process prefix: ids from another process or an earlier run are foreign."""
    return f"{int(time.time() * 1000) % 36**8:x}{os.getpid() % 4096:03x}"


_PROVEN_CHECKED = 16  # after a gap, the newest delivered events compared with the history
_GAP_HERE: tuple[str, bytes, str | None] = ("", b"", None)
"""Queued among a topic's held messages (by identity) where a gap was marked while
they waited for a check: they arrived before it, so they go out before it too."""


class Hub:
    def __init__(
        self,
        *,
        history: int,
        coalesce: frozenset[str] = frozenset(),
        epoch: str | None = None,
        verify: Verify | None = None,
        on_missed: Callable[[list[str]], None] = lambda merchant_ids: None,
        on_lost: Callable[[str, DurableId, DurableId], None] = lambda m, first, last: None,
    ) -> None:
        """`verify` checks, later, that the durable history holds an event (without it
        every envelope is trusted); `on_missed(merchants)` is called when it finds that
        messages of theirs never reached this process, before the next one is
        delivered (the subscriber lost them: a failover, a replica resyncing);
        `on_lost(merchant, first, last)` when a failover lost the events this process
        had under the ids `first`..`last` and gave those ids to other events."""
        self.epoch = epoch or process_epoch()
        self._verify = verify
        self._on_missed = on_missed
        self._on_lost = on_lost
        self._history = history
        self._coalesce = coalesce
        self._seq = 0
        self._topics: dict[str, Topic] = {}
        self.messages = 0
        self.deliveries = 0
        self.forged = 0  # envelopes whose id the history does not hold: sent as plain
        self.copies = 0  # durable events that came again after going out here: dropped

    def __len__(self) -> int:
        return len(self._topics)

    def publish(
        self, merchant_id: str, event: str, payload: bytes, event_id: str | None = None
    ) -> Entry | None:
        """Record and fan out one message; None for a merchant not held (or held back).

        `event_id` is a durable event's global id (plain messages get a local one),
        taken as it comes only when it continues the merchant's proven head; any
        other (the first one seen, a jump, another epoch, an old id again) holds the
        merchant's messages, in order, until `verify` says whether the history holds
        that event (`_verified`): a plain PUBLISH imitating the envelope cannot hand
        out an id of events not yet published."""
        topic = self._topics.get(merchant_id)
        if topic is None:
            return None
        if topic.pending is not None:
            topic.pending.append((event, payload, event_id))
            return None
        if event_id is not None and event_id != topic.next_durable and self._verify is not None:
            durable = DurableId.parse(event_id)
            if durable is not None:
                topic.pending = [(event, payload, event_id)]
                expected = DurableId.parse(topic.next_durable or "")
                proven = [] if expected is not None else topic.proven_tail(_PROVEN_CHECKED)
                self._verify(merchant_id, durable, event, payload, expected, proven,
                             lambda genuine, missed, lost_from: self._verified(
                                 merchant_id, topic, genuine, missed, lost_from))
                return None
        return self._fan_out(topic, event, payload, event_id)

    def _fan_out(self, topic: Topic, event: str, payload: bytes, event_id: str | None) -> Entry:
        entry = self.entry(event, payload, event_id)
        topic.history.append(entry)
        subscribers = topic.subscribers
        for subscriber in subscribers:
            subscriber.deliver(entry)
        self.messages += 1
        self.deliveries += len(subscribers)
        if event_id is not None:
            topic.advance(event_id)
        return entry

    def _verified(self, merchant_id: str, topic: Topic, genuine: bool, missed: bool,
                  lost_from: DurableId | None = None) -> None:
        """The held envelope checked (verdict.py): sent with its id, as a plain event or
        not at all (a copy); then the messages held behind it go on, until the next one
        that needs a check. `on_missed` comes first (streams resync) when events before
        it never arrived, or a failover gave ids delivered here to other events."""
        pending = topic.pending
        if pending is None or self._topics.get(merchant_id) is not topic:
            return
        topic.pending = None
        (event, payload, event_id), rest = pending[0], pending[1:]
        verdict = judge(topic, event, payload, event_id or "", genuine, missed, lost_from)
        if verdict.copy:  # Redis Cluster may bring one message twice across a failover
            self.copies += 1
            log.info("merchant=%s: %s came again (a copy): dropped", merchant_id, event_id)
        elif verdict.event_id is None:
            self.forged += 1
        if verdict.lost is not None:
            first, last = verdict.lost
            log.warning("merchant=%s: durable ids %s..%s delivered here are other events' now "
                        "(a failover lost writes): resync", merchant_id, first, last)
            topic.reused.append((first, last))  # kept here too: recording it may fail
            self._on_lost(merchant_id, first, last)
        if verdict.resync:
            self.mark_gap([merchant_id])
            self._on_missed([merchant_id])
        if not verdict.copy:
            self._fan_out(topic, event, payload, verdict.event_id)
        for held in rest:
            if held is _GAP_HERE:
                self._gap(topic)
            else:
                self.publish(merchant_id, *held)

    def held_back(self, merchant_id: str) -> bool:
        """Whether messages of the merchant wait for a check (a replay's flush waits)."""
        topic = self._topics.get(merchant_id)
        return topic is not None and topic.pending is not None

    def entry(self, event: str, payload: bytes, event_id: str | None = None) -> Entry:
        """A new entry with the next sequence number (published, or replayed from Redis)."""
        self._seq += 1
        return Entry(
            self._seq,
            event_id or f"{self.epoch}-{self._seq}",
            event,
            payload,
            keep_payload=event in self._coalesce,
        )

    def open(self, merchant_id: str) -> Topic:
        topic = self._topics.get(merchant_id)
        if topic is None:
            topic = self._topics[merchant_id] = Topic(self._history)
        return topic

    def drop(self, merchant_id: str) -> None:
        """Forget a merchant and its history (its linger expired)."""
        self._topics.pop(merchant_id, None)

    def attach(
        self, merchant_id: str, subscriber: Subscriber, last_event_id: str | None
    ) -> tuple[list[Entry], bool]:
        """Register `subscriber`; return (events to replay, whether a gap was detected).

        One synchronous step, so nothing published meanwhile can fall between the
        replay and live delivery. Any `last_event_id` text is safe: an id this
        process did not issue (or no longer holds) is a gap, never an error.
        """
        topic = self.open(merchant_id)
        replay = [] if not last_event_id else topic.after(last_event_id)
        topic.join(subscriber)
        return replay or [], replay is None

    def held_after(self, merchant_id: str, last_event_id: str) -> list[Entry] | None:
        """What the ring holds after `last_event_id`; None when it cannot bridge to it."""
        topic = self._topics.get(merchant_id)
        return topic.after(last_event_id) if topic is not None else None

    def detach(self, merchant_id: str, subscriber: Subscriber) -> None:
        if (topic := self._topics.get(merchant_id)) is not None:
            topic.leave(subscriber)

    def again(self, entry: Entry) -> Entry:
        """`entry`'s frame under the next sequence number, to queue it a second time."""
        self._seq += 1
        return entry.renumbered(self._seq)

    def gap_mark(self, merchant_id: str) -> int:
        """The merchant's gap mark: pass it to `backfill` after a history read."""
        topic = self._topics.get(merchant_id)
        return topic.mark if topic is not None else -1

    def backfill(self, merchant_id: str, history: Sequence[Entry], gap_mark: int) -> int:
        """Put durable events read from Redis in front of the merchant's ring, so that
        later reconnects bridge from memory; how many were added.

        `history` is the merchant's durable history in offset order, read while it
        was subscribed, after every earlier message had reached the hub; `gap_mark`
        is `gap_mark(merchant_id)` from before the read. Every durable event
        published since is then in the ring, so the ring's first durable entry tells
        where the read's events stop being new. Nothing is added when a gap was
        marked since the read began, a message of the merchant is held for a check
        (it may be one the read holds too), the ring still holds entries from before
        a gap, the ring is full, or its durable entries are of another epoch.
        """
        topic = self._topics.get(merchant_id)
        if topic is None or topic.mark != gap_mark or topic.pending is not None or not history:
            return 0
        return topic.backfill(history)

    def proves(self, merchant_id: str, last: DurableId) -> bool:
        """Whether `last` is of the merchant's history as this process last saw it, and
        not past the newest event it proved (from live events or a flushed read)."""
        topic = self._topics.get(merchant_id)
        return topic is not None and topic.proves(last)

    def gave_again(self, merchant_id: str, last: DurableId) -> bool:
        """Whether a failover gave `last`, delivered here, to another event (known here
        even when recording it in Redis failed: history.remember_lost)."""
        topic = self._topics.get(merchant_id)
        return topic is not None and bool(topic.reused) and topic.gave_again(last)

    def learn_head(self, merchant_id: str, head: DurableId, gap_mark: int) -> None:
        """A history read (flushed: every message published before it is here) ended
        at `head`: the merchant's next durable event continues it, without a check."""
        topic = self._topics.get(merchant_id)
        if topic is not None and topic.mark == gap_mark and topic.pending is None:
            topic.learn_head(head)

    def _existing(self, merchant_ids: Iterable[str]) -> Iterator[tuple[str, Topic]]:
        """(merchant, topic) of those of `merchant_ids` this hub holds."""
        for merchant_id in merchant_ids:
            if (topic := self._topics.get(merchant_id)) is not None:
                yield merchant_id, topic

    def mark_gap(self, merchant_ids: Iterable[str]) -> None:
        """Messages may have been lost: no replay may bridge this point for these merchants."""
        for _, topic in self._existing(merchant_ids):
            self._gap(topic)

    def _gap(self, topic: Topic) -> None:
        """Mark a gap after what was delivered, and after what is held for a check: those
        messages arrived before it (delivered later, they would seem to follow it, and a
        client resuming from one of them would be told it missed nothing)."""
        topic.mark_gap(self._seq)
        if topic.pending is not None:
            topic.pending.append(_GAP_HERE)  # marked again once they are out

    def resync(
        self, merchant_ids: Iterable[str], control: Control, *, until_live: bool = True
    ) -> None:
        """Messages of these merchants may have been lost: mark the gap and send
        `control` (a `resync`) to their streams. `until_live` (Redis reconnected): a
        stream that attaches before `live_again` gets it then, as it may have missed
        them too. Not for messages found missed while the channels are live: a stream
        attaching then reads after them."""
        merchant_ids = list(merchant_ids)
        for _, topic in self._existing(merchant_ids):
            self._gap(topic)
            if until_live:
                topic.owe_resync()
        self.broadcast(control, merchant_ids)

    def awaiting_live(self, merchant_ids: Iterable[str]) -> set[str]:
        """The merchants whose `resync` waits for `live_again` (their link reconnects)."""
        return {m for m, topic in self._existing(merchant_ids) if topic.late is not None}

    def live_again(self, merchant_ids: Iterable[str], control: Control) -> list[str]:
        """Their channels are subscribed again after `resync`: streams attached since get
        `control` now, first; the merchants whose streams all got it (a new topic: none)."""
        resynced = []
        for merchant_id, topic in self._existing(merchant_ids):
            owed = topic.live_again()
            if owed is not None:
                resynced.append(merchant_id)
                for subscriber in owed:
                    subscriber.deliver(control)
        return resynced

    def subscribers(self, merchant_id: str) -> list[Subscriber]:
        """The merchant's open streams (a copy)."""
        return list(topic.subscribers) if (topic := self._topics.get(merchant_id)) else []

    def broadcast(self, control: Control, merchant_ids: Iterable[str]) -> None:
        for _, topic in self._existing(merchant_ids):
            for subscriber in list(topic.subscribers):
                subscriber.deliver(control)

