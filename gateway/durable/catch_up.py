"""Where a replay or a snapshot goes among the live events queued meanwhile.

A stream is attached before its replay or snapshot is read, so live events
queue behind it; these pure rules order what the stream then writes, with no
gap and no duplicate (`Stream.replay_before_live`, `put_first`, `release`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..fanout.frames import Deliverable, Entry
from .ids import DurableId

__all__ = ["after_snapshot", "at_or_before", "before_live", "newer", "with_snapshot"]


def at_or_before(frame: Deliverable, last: DurableId) -> bool:
    """Whether `frame` is a durable event at or before `last` (of the same history)."""
    if not isinstance(frame, Entry):
        return False
    durable = DurableId.parse(frame.id)
    return durable is not None and durable.epoch == last.epoch and durable.offset <= last.offset


def newer(frames: Iterable[Deliverable], last: DurableId) -> list[Deliverable]:
    """`frames` without the durable events at or before `last`."""
    return [frame for frame in frames if not at_or_before(frame, last)]


def after_snapshot(frames: Sequence[Deliverable], head: DurableId | None) -> list[Deliverable]:
    """Queued `frames` as they follow a snapshot read at `head` (None: no history yet).

    The durable events up to `head` are in the snapshot: dropped. Plain events
    queued before the last of them lose their `id:` line: the client's
    Last-Event-ID stays the snapshot's, so a reconnect resumes after it. Their
    own id would resume the ring from before those durable events and replay
    what the snapshot already held.
    """
    if head is None:
        return list(frames)
    cut = max((i + 1 for i, frame in enumerate(frames) if at_or_before(frame, head)), default=0)
    earlier = [f.without_id() if isinstance(f, Entry) else f for f in newer(frames[:cut], head)]
    return [*earlier, *frames[cut:]]


def with_snapshot(
    first: Sequence[Deliverable], snapshot: Entry | None, head: DurableId | None,
    queued: Sequence[Deliverable],
) -> list[Deliverable]:
    """`first`, then a `snapshot` read at `head` (if any), then `queued` as it follows it."""
    if snapshot is None:
        return [*first, *queued]
    return [*first, snapshot, *after_snapshot(queued, head)]


def before_live(
    entries: Sequence[Entry], queued: Iterable[Deliverable], last: DurableId
) -> tuple[list[Deliverable], int]:
    """A reconnect's replay `entries` (what the client missed after `last`) put before
    the live events `queued` meanwhile; with how many of `entries` were used.

    `entries` is an unbroken run, and everything published after its first live
    one queued live too: so the replay stops at its first event that also
    queued, which keeps its live place (after a plain event published just
    before it). Queued durable events up to `last` are dropped: the client came
    from a process that delivered them before this one's subscriber had read them.
    """
    live = newer(queued, last)
    live_ids = {entry.id for entry in live if isinstance(entry, Entry)}
    used = next((i for i, entry in enumerate(entries) if entry.id in live_ids), len(entries))
    return [*entries[:used], *live], used
