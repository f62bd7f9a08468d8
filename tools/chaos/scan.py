"""Looking ahead in a session's frames, and naming offsets, for the checker. Pure code."""

from __future__ import annotations

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
    write's ``progress`` the id held on a deposed primary (``_lost_coalesced``)."""
    return (_kept_coalesced(know, epoch, offset, later, t, resumed)
            or _lost_coalesced(know, epoch, offset, later, t))


def _kept_coalesced(know: Knowledge, epoch: str, offset: int, later: list[Frame], t: float,
                    resumed: Session | None) -> bool:
    """`coalesced` for the event Redis holds under the id now."""
    kind = know.kind.get((epoch, offset))
    if kind is None or kind[0] != "progress" or kind[1] is None:
        return False
    newer = know.newer_progress(epoch, kind[1], offset, t)
    if newer is None:
        return False
    if resumed is not None:
        since = durable_id(resumed.last_event_id)
        if since is not None and since[0] == epoch and since[1] < newer:
            later = [*later, *resumed.frames]
    for f in later:
        d = durable_id(f.id)
        if f.event == "progress" and d and d[0] == epoch and d[1] >= newer and (
                job_of(f.payload()) == kind[1]):
            return True
        if f.event == "snapshot" and snapshot_has(f, kind[1], epoch, newer - 1):
            return True
    return False


def _lost_coalesced(know: Knowledge, epoch: str, offset: int, later: list[Frame],
                    t: float) -> bool:
    """Whether a skipped id whose event now is no coalescible ``progress`` held one that
    a failover lost (a lost write): coalesced when a newer ``progress`` of that job
    published by ``t`` came later in the session as a lost write's event itself, so
    the tab was served the deposed primary's history, where the id held the lost one.
    (A stand-in Redis kept proves the newer history, where the id's event is owed.)"""
    d = (epoch, offset)
    for event, job in know.lost_kinds.get(d, ()):
        if event != "progress" or job is None:
            continue
        newer = know.newer_progress(epoch, job, offset, t)
        if newer is None:
            continue
        for f in later:
            o = durable_id(f.id)
            if f.event == "progress" and o and o[0] == epoch and o[1] >= newer \
                    and job_of(f.payload()) == job \
                    and ident_of(f.payload()) in {w.ident for w in know.lost.get(o, ())}:
                return True
    return False


def shown(offsets: list[int]) -> str:
    more = " ..." if len(offsets) > 10 else ""
    return f"{', '.join(str(o) for o in offsets[:10])}{more} ({len(offsets)})"
