"""Where a replay or a snapshot goes among the live events queued meanwhile.

A stream is attached before its replay or snapshot is read, so live events
queue behind it; these pure rules order what the stream then writes, with no
gap and no duplicate (`Stream.replay_before_live`, `put_first`, `release`).

A snapshot already queued (a resync's, released while the stream was still
opening) starts a new baseline: it and what follows it are ordered already
and stay as they are. The rules apply to what queued before it only; else a
read answering later would drop that snapshot as an event it already covers,
and the resync before it would go out without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..fanout.frames import Deliverable, Entry
from .ids import DurableId

__all__ = ["SNAPSHOT", "after_snapshot", "at_or_before", "before_live", "newer", "with_snapshot"]

SNAPSHOT = "snapshot"
"""The event name of a snapshot frame (reserved: no published event has it)."""


def at_or_before(frame: Deliverable, last: DurableId) -> bool:
    """Whether `frame` is a durable event at or before `last` (of the same history)."""
    if not isinstance(frame, Entry):
        return False
    durable = DurableId.parse(frame.id)
    return durable is not None and durable.epoch == last.epoch and durable.offset <= last.offset


def newer(frames: Iterable[Deliverable], last: DurableId) -> list[Deliverable]:
    """`frames` without the durable events at or before `last`."""
    return [frame for frame in frames if not at_or_before(frame, last)]


def _is_snapshot(frame: Deliverable) -> bool:
    return isinstance(frame, Entry) and frame.event == SNAPSHOT


def _baseline(frames: Sequence[Deliverable]) -> int:
    """The index of the first snapshot queued in `frames` (their length when none)."""
    return next((i for i, frame in enumerate(frames) if _is_snapshot(frame)), len(frames))


def after_snapshot(frames: Sequence[Deliverable], head: DurableId | None) -> list[Deliverable]:
    """Queued `frames` as they follow a snapshot read at `head` (None: no history yet).

    The durable events up to `head` are in the snapshot: dropped. Plain events
    queued before the last of them lose their `id:` line: the client's
    Last-Event-ID stays the snapshot's, so a reconnect resumes after it. Their
    own id would resume the ring from before those durable events and replay
    what the snapshot already held. A snapshot queued already, and what follows
    it, stay as they are (see the module docstring).
    """
    base = _baseline(frames)
    ahead, kept = frames[:base], frames[base:]
    if head is None:
        return [*ahead, *kept]
    cut = max((i + 1 for i, frame in enumerate(ahead) if at_or_before(frame, head)), default=0)
    earlier = [f.without_id() if isinstance(f, Entry) else f for f in newer(ahead[:cut], head)]
    return [*earlier, *ahead[cut:], *kept]


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
    A snapshot queued already, and what follows it, stay as they are.
    """
    queued = list(queued)
    base = _baseline(queued)
    live = [*newer(queued[:base], last), *queued[base:]]
    live_ids = {entry.id for entry in live if isinstance(entry, Entry) and not _is_snapshot(entry)}
    used = next((i for i, entry in enumerate(entries) if entry.id in live_ids), len(entries))
    return [*entries[:used], *live], used
