"""What a history check's answer means for the envelope a merchant's topic held.

The hub holds a durable message whose id does not continue the merchant's proven
head until the history says whether it holds that event (`Verify`, below). The
answer decides the id it goes out with (none: a plain PUBLISH imitating the
envelope, or an event that went out under it published again), which ids a
failover gave to other events (`lost`), and whether the merchant's streams resync
before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..durable.ids import DurableId
from .topic import Topic

__all__ = ["Done", "Proven", "Verdict", "Verify", "judge"]

Proven = list[tuple[DurableId, bytes]]  # durable events delivered here, newest first, framed
Done = Callable[[bool, bool, "DurableId | None"], None]
Verify = Callable[[str, DurableId, str, bytes, DurableId | None, Proven, Done], None]
"""`verify(merchant_id, id, event, payload, expected, proven, done)`, the check the hub
asks: whether the history holds that event, answered later as `done(genuine, missed,
lost_from)`; `missed`: it holds events of ours between `expected` (the id that would
have continued the proven head) and it, which this process never received;
`lost_from`: the oldest of `proven` (after a gap) it holds as another event."""


class Verdict(NamedTuple):
    event_id: str | None  # the id the event goes out with; None: as a plain event
    lost: tuple[DurableId, DurableId] | None  # ids delivered here, now other events'
    resync: bool  # the merchant's streams resync before it
    copy: bool = False  # it went out here under this id already: not sent again


def judge(topic: Topic, event: str, payload: bytes, event_id: str, genuine: bool,
          missed: bool, lost_from: DurableId | None) -> Verdict:
    """`genuine`: the history holds the event under `event_id`; `missed`: events of
    ours before it never arrived; `lost_from`: the oldest event delivered here up to
    the head that the history holds as another one (asked after a gap).

    A genuine id at or below the proven head is either an event that went out under
    it published again (a copy: Redis Cluster may deliver one message twice across
    a failover; dropped when the ring holds it, else plain: never twice under its
    id) or the history was rolled back: a
    failover lost the writes the head came from (delivered live, or read from the
    deposed primary) and the new primary gave their ids to other events
    (`Topic.sent_before` tells which). Then the streams resync (some got the lost
    events) and the event goes out with its id, the new head. The same when the
    new primary gave those ids before this process subscribed to it (`lost_from`)."""
    durable = DurableId.parse(event_id)
    head = topic.durable_head
    if durable is None or not genuine:
        return Verdict(None, None, False)
    lost_first = lost_from
    if head is not None and head.epoch == durable.epoch and durable.offset <= head.offset:
        sent = topic.sent_before(event_id, durable, event, payload)
        if sent is not None:
            return Verdict(None, _lost(lost_first, head), lost_first is not None or missed,
                           copy=sent == "here")
        lost_first = durable if lost_first is None else min(
            lost_first, durable, key=lambda d: d.offset)
    lost = _lost(lost_first, head)
    return Verdict(event_id, lost, missed or lost is not None)


def _lost(first: DurableId | None, head: DurableId | None) -> tuple[DurableId, DurableId] | None:
    return None if first is None or head is None else (first, head)
