"""Reads that check a live message against the history: whether it holds the
event a message claims (`holds_many`), what a jump skipped (`missed`), and which
events delivered here a failover gave away (`first_lost`). The hub's envelope
checks (envelopes.py) make them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import redis.asyncio as aioredis

from ..fanout.frames import event_frame
from .ids import DurableId, history_keys
from .redis_reads import in_multi, resent, stream_entry, text

__all__ = ["Claim", "first_lost", "holds_many", "missed"]


Claim = tuple[str, DurableId, str, bytes]
"""A message claiming a durable id: (merchant id, its id, event, payload)."""


async def holds_many(client: aioredis.Redis | Any, claims: Sequence[Claim]) -> list[bool]:
    """For each claim, whether the merchant's history has that event under that id (a
    message claiming an id may be a plain PUBLISH imitating the envelope), read in one
    MULTI (on Redis Cluster, where a MULTI stays in one slot, pass one claim at a time).

    An entry no longer kept (trimmed, or `sse.history: 0`) counts when the id is
    of the current epoch and not past its newest: no replay can start from it.
    """
    def queue(pipe: Any) -> None:
        for merchant_id, durable, _, _ in claims:
            stream, meta = history_keys(merchant_id)
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(stream, f"0-{durable.offset}", f"0-{durable.offset}")

    replies = await in_multi(client, queue)
    return [_holds(durable, event, payload, *replies[2 * i: 2 * i + 2])
            for i, (_, durable, event, payload) in enumerate(claims)]


def _holds(durable: DurableId, event: str, payload: bytes, meta: list[Any],
           entries: list[Any]) -> bool:
    epoch, head = meta
    if epoch is None or text(epoch) != durable.epoch or int(head or 0) < durable.offset:
        return False
    if not entries:
        return True
    found = stream_entry(durable.epoch, *entries[0])
    return found.event == event and found.payload == payload


async def first_lost(
    client: aioredis.Redis | Any, merchant_id: str, proven: Sequence[tuple[DurableId, bytes]]
) -> DurableId | None:
    """The oldest of `proven` (durable events this process delivered, of one epoch, each
    with its frame) that the history now holds as another event: a failover lost it and
    the new primary gave its id again. None when each is held as delivered, trimmed, not
    yet given again, or the history is of another epoch (no id of the old one comes again)."""
    epoch = proven[0][0].epoch
    offsets = [durable.offset for durable, _ in proven]
    stream, meta = history_keys(merchant_id)
    (held_epoch, _), entries = await in_multi(client, lambda pipe: pipe.hmget(
        meta, "epoch", "offset").xrange(stream, f"0-{min(offsets)}", f"0-{max(offsets)}"))
    if held_epoch is None or text(held_epoch) != epoch:
        return None
    held = {e.id.offset: e for e in (stream_entry(epoch, *raw) for raw in entries)}
    lost = [durable for durable, frame in proven
            if (e := held.get(durable.offset)) is not None
            and event_frame(str(durable), e.event, e.payload) != frame]
    return min(lost, key=lambda durable: durable.offset, default=None)


async def missed(
    client: aioredis.Redis | Any, merchant_id: str, expected: DurableId, durable: DurableId,
    events: Collection[str],
) -> bool:
    """Whether the history holds events of types in `events` from `expected` up to
    (not including) `durable`: a subscriber that was waiting for `expected` and got
    `durable` lost them. True when it cannot tell (entries trimmed, or another epoch)."""
    if durable.epoch != expected.epoch:
        return True
    if durable.offset <= expected.offset:
        return False
    stream = history_keys(merchant_id)[0]
    last = durable.offset - 1
    entries = await resent(
        lambda: client.xrange(stream, f"0-{expected.offset}", f"0-{last}")) or []
    if len(entries) != last - expected.offset + 1:
        return True
    return any(stream_entry(durable.epoch, *raw).event in events for raw in entries)

