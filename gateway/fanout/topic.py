"""One merchant's state in the hub: its history ring, open streams and proven head."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Literal, Protocol

from ..durable.ids import DurableId
from .frames import Control, Entry, event_frame

__all__ = ["Subscriber", "Topic"]

_MAX_ID_CHARS = 64  # longer Last-Event-IDs are never ours: resync without a lookup
_marks = itertools.count(1)


class Subscriber(Protocol):
    def deliver(self, entry: Entry | Control) -> None: ...


class Topic:
    """One merchant: its history ring and its open streams."""

    __slots__ = ("durable_head", "gap_after", "head_read", "history", "late", "mark",
                 "next_durable", "pending", "reused", "subscribers")

    def __init__(self, history: int) -> None:
        self.history: deque[Entry] = deque(maxlen=history)
        self.subscribers: set[Subscriber] = set()
        # the newest durable id proven here, and the id that continues it
        self.durable_head: DurableId | None = None
        self.next_durable: str | None = None
        self.head_read = False  # the head came from a read, not from an event delivered here
        # messages held, in order, while an envelope that does not continue is verified
        self.pending: list[tuple[str, bytes, str | None]] | None = None
        self.gap_after = 0  # ids up to this one may be followed by messages Redis lost
        # new at every gap and for every topic: a read begun under another mark (or
        # under an earlier subscription of the merchant) may not backfill this ring
        self.mark = next(_marks)
        # from a resync until its channels are live again: the streams attached since,
        # which the resync did not reach
        self.late: set[Subscriber] | None = None
        # ranges of ids delivered here that a failover gave to other events: a client at
        # one of them missed the other event, wherever the ring holds that id now
        self.reused: deque[tuple[DurableId, DurableId]] = deque(maxlen=8)

    def mark_gap(self, after_seq: int) -> None:
        """Messages after hub sequence `after_seq` may have been lost: reads begun
        before now may not backfill the ring, and what follows may not continue the
        proven head."""
        self.gap_after = after_seq
        self.mark = next(_marks)
        self.next_durable = None

    def backfill(self, history: Sequence[Entry]) -> int:
        """Put `history` (durable events in offset order, read under this topic's mark)
        in front of the ring, up to where the ring's own durable events begin; how many
        were added (`Hub.backfill` says when)."""
        ring = self.history
        room = (ring.maxlen or 0) - len(ring)
        if room <= 0 or (ring and ring[0].seq <= self.gap_after):
            return 0
        oldest = DurableId.parse(history[0].id)
        if oldest is None:
            return 0
        stop = oldest.offset + len(history)  # offsets in `history` are consecutive
        for entry in ring:
            durable = DurableId.parse(entry.id)
            if durable is not None:
                if durable.epoch != oldest.epoch:
                    return 0
                stop = durable.offset
                break
        if stop > oldest.offset + len(history):  # events between the read and the ring: gone
            return 0
        older = history[: max(stop - oldest.offset, 0)][-room:]
        ring.extendleft(reversed(older))
        return len(older)

    def advance(self, event_id: str, read: bool = False) -> None:
        """A durable id delivered (or, `read`, where a flushed read ended): it is the
        proven head; its successor continues it."""
        durable = DurableId.parse(event_id)
        if durable is not None:
            self.durable_head = durable
            self.next_durable = f"{durable.epoch}:{durable.offset + 1}"
        self.head_read = read

    def sent_before(
        self, event_id: str, durable: DurableId, event: str, payload: bytes
    ) -> Literal["here", "earlier"] | None:
        """Whether a genuine envelope at or below the proven head is a copy of an event
        that went out here (published again), not another event that the history now
        holds under that id (a failover lost the writes the head came from, and the
        new primary gave their ids again). The ring tells: it holds this very event
        under the id ("here"), or another one (None); or it does not hold the id though
        it reaches back past it (never sent here: None); or it does not reach back that
        far ("earlier": a copy), unless it is the head itself and the head came from a
        read (a snapshot, whose state may hold the write a failover lost under that id)."""
        reaches = False
        for entry in self.history:
            if entry.id == event_id:
                same = entry.event == event and entry.wire[0] == event_frame(
                    event_id, event, payload)
                return "here" if same else None
            if not reaches and (held := DurableId.parse(entry.id)) is not None:
                reaches = held.epoch == durable.epoch and held.offset < durable.offset
        if reaches or (self.head_read and durable == self.durable_head):
            return None
        return "earlier"

    def proven_tail(self, limit: int) -> list[tuple[DurableId, bytes]]:
        """Up to `limit` durable events of the ring, newest first, of the proven head's
        epoch and not past it, each with its frame: what this process delivered (from
        before a gap too) and may have to compare with the history."""
        head = self.durable_head
        tail: list[tuple[DurableId, bytes]] = []
        if head is None:
            return tail
        for entry in reversed(self.history):
            durable = DurableId.parse(entry.id)
            if durable is None or durable.epoch != head.epoch or durable.offset > head.offset:
                continue
            tail.append((durable, bytes(entry.wire[0])))
            if len(tail) >= limit:
                break
        return tail

    def after(self, last_event_id: str) -> list[Entry] | None:
        """The entries after `last_event_id` in the ring, None when it does not hold
        that id (or holds it from before a gap)."""
        event_id = last_event_id.strip()
        if self.reused and (durable := DurableId.parse(event_id)) and self.gave_again(durable):
            return None
        if len(event_id) <= _MAX_ID_CHARS:
            history = self.history
            for index, entry in enumerate(history):
                if entry.id == event_id and entry.seq > self.gap_after:
                    return list(itertools.islice(history, index + 1, None))
        return None

    def proves(self, last: DurableId) -> bool:
        """Whether `last` is of the history proven here, not past its newest event."""
        head = self.durable_head
        return head is not None and head.epoch == last.epoch and last.offset <= head.offset

    def learn_head(self, head: DurableId) -> None:
        """A flushed read ended at `head`: the next durable event continues it."""
        known = self.durable_head
        if known is None or (known.epoch == head.epoch and known.offset < head.offset):
            self.advance(str(head), read=True)

    def join(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self.late is not None:  # attached after a resync: owed it once live again
            self.late.add(subscriber)

    def leave(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if self.late:
            self.late.discard(subscriber)

    def owe_resync(self) -> None:
        """A resync went out to the streams here; those attaching from now on are owed
        it until the channels are live again (`live_again`)."""
        self.late = set()

    def live_again(self) -> set[Subscriber] | None:
        """The channels are live again: the streams owed the resync (None: no resync
        was waiting, so no stream here got one). Reads begun before now prove nothing."""
        late, self.late = self.late, None
        if late is None:
            return None
        self.renew_mark()
        return late & self.subscribers

    def renew_mark(self) -> None:
        """Reads begun before now may not backfill the ring nor teach the head: the
        merchant's channels were down meanwhile (a read's flush proves nothing then)."""
        self.mark = next(_marks)

    def gave_again(self, durable: DurableId) -> bool:
        """Whether a failover gave `durable`, delivered here, to another event."""
        return any(first.epoch == durable.epoch and first.offset <= durable.offset <= last.offset
                   for first, last in self.reused)
