"""Looking ahead in a session's frames, and naming offsets, for the checker. Pure code."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from .knowledge import Knowledge, ident_of, job_of
from .records import Frame, Session, durable_id

__all__ = ["coalesced", "queued_first", "resync_follows", "shown", "snapshot_has"]


def resync_follows(later: list[Frame]) -> bool:
    """Whether the session's resync of a failed replay (``history_gap``; a Redis
    reconnect's comes on its own later) is still to come."""
    for f in later:
        if f.event == "resync":
            data = f.payload()
            return isinstance(data, dict) and data.get("reason") == "history_gap"
    return False


def queued_first(later: list[Frame]) -> str:
    """A note when the failed replay's resync comes only after this frame."""
    return " (before the resync of a failed replay)" if resync_follows(later) else ""


def snapshot_has(f: Frame, job: str, epoch: str, offset: int) -> bool:
    """Whether snapshot frame ``f`` holds ``job`` at an id of ``epoch`` past ``offset``."""
    data = f.payload()
    jobs = data.get("jobs") if isinstance(data, dict) else None
    for item in jobs if isinstance(jobs, list) else ():
        d = durable_id(item.get("id")) if isinstance(item, dict) else None
        if d and d[0] == epoch and d[1] > offset and str(item.get("job")) == job:
            return True
    return False


def coalesced(know: Knowledge, epoch: str, offset: int, later: list[Frame], t: float,
              resumed: Session | None = None) -> bool:
    """Whether a skipped ``progress`` was coalesced: a queued event is dropped only for a
    newer ``progress`` of its job queued behind it before it was written out, so that one
    was published by ``t``, when the frame showing the gap arrived; it (or a newer one
    that replaced it in turn) then comes later in the session (``later``), or a later
    snapshot holds the job at or past it (it made way for the snapshot). Or in the
    tab's next session (``resumed``) when it resumed from an id before it: the stream
    was cut before it wrote the newer one out, and the replay brings it. Or a lost
    write's ``progress`` the id held on a deposed primary."""
    d = (epoch, offset)
    kind = know.kind.get(d)
    return (kind is not None and _made_way(know, d, kind, later, t, resumed, lost=False)) \
        or any(_made_way(know, d, w.kind, later, t, None, lost=True)
               for w in know.lost.get(d, ()))


def _made_way(know: Knowledge, d: tuple[str, int], kind: tuple[str, str | None],
              later: Iterable[Frame], t: float, resumed: Session | None, lost: bool) -> bool:
    """`coalesced` for one event Redis gave ``d``: the one it holds now, or a lost write's
    (``lost``: then only a newer lost write's own progress proves it; a stand-in Redis
    kept proves the newer history, where the id's event is owed)."""
    (epoch, offset), (event, job) = d, kind
    if event != "progress" or job is None:
        return False
    newer = know.newer_progress(epoch, job, offset, t)
    if newer is None:
        return False
    since = durable_id(resumed.last_event_id) if resumed is not None else None
    if resumed is not None and since is not None and since[0] == epoch and since[1] < newer:
        later = itertools.chain(later, resumed.frames)
    for f in later:
        o = durable_id(f.id)
        if f.event == "progress" and o and o[0] == epoch and o[1] >= newer:
            data = f.payload()
            if job_of(data) == job and (
                    not lost or any(w.ident == ident_of(data) for w in know.lost.get(o, ()))):
                return True
        elif not lost and f.event == "snapshot" and snapshot_has(f, job, epoch, newer - 1):
            return True
    return False


def shown(offsets: list[int]) -> str:
    more = " ..." if len(offsets) > 10 else ""
    return f"{', '.join(str(o) for o in offsets[:10])}{more} ({len(offsets)})"
