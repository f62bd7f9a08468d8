"""Looking ahead in a session's frames, and naming offsets, for the checker."""

from __future__ import annotations

from .records import Frame, durable_id

__all__ = ["queued_first", "resync_follows", "shown", "snapshot_has"]


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


def shown(offsets: list[int]) -> str:
    more = " ..." if len(offsets) > 10 else ""
    return f"{', '.join(str(o) for o in offsets[:10])}{more} ({len(offsets)})"
