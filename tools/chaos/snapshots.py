"""What a ``snapshot`` frame must hold, checked against what is known of the
merchant's events. Pure code, no I/O.

The gateway reads a merchant's job state and newest durable id in one MULTI; the
frame's id is that newest id, its ``jobs`` each job's latest durable event, by id
ascending, the ``sse.snapshot_jobs`` most recently updated (docs/publishing.md, Job
state). publish.lua writes the state in the same step as the history (same slot on
a cluster, same expiry, a new epoch deletes it) and keeps, after every publish, the
jobs with the newest latest events. So, for a snapshot of id S:

- every item's id is of S's epoch and at most S; items are in id order, one per job;
- an item's id holds the item's event and job (and its ``pub``/``seq``): those of the
  event Redis gave the id, or of a lost one's (a snapshot read on a primary before a
  failover lost its write);
- no event of the item's job is known between the item's id and S;
- a job whose latest event at or below S is known is there: always while the frame
  holds fewer than ``snapshot_jobs`` items (none was ever dropped), else when that
  event is newer than the oldest item (it outranks a job that is there).

What is known: acknowledgements, receipts, Redis' final history and the history tap,
without ids whose event is uncertain (:attr:`Knowledge.uncertain`) and, for the last two
rules, lost writes' ids (a snapshot read before the loss holds the lost event's job
there, one read after the new one's).
"""

from __future__ import annotations

from typing import Any

from .knowledge import Knowledge, ident_of
from .records import Frame, durable_id

__all__ = ["snapshot_problems"]

Offset = tuple[str, int]


def snapshot_problems(f: Frame, know: Knowledge, kept: int) -> list[str]:
    """What is wrong with snapshot frame ``f`` (empty: nothing), in words."""
    sid = durable_id(f.id)
    if sid is None:
        return [f"snapshot id {f.id!r} is not a durable id"]
    data = f.payload()
    items = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        return ["snapshot without jobs (a merchant with no job state gets none)"]
    out: list[str] = []
    held: dict[str, int] = {}
    last = 0
    for item in items:
        problem = _item(item, sid, know, held)
        if problem:
            out.append(problem)
            continue
        offset = held[str(item["job"])]
        if offset < last:
            out.append(f"{item['id']} after {sid[0]}:{last}: not in id order")
        last = max(last, offset)
    if out:
        return out
    # The gateway leaves out a job whose payload has no strict JSON text (NaN, a lone
    # surrogate: docs/publishing.md, "Job state"), so a full frame could hold fewer than
    # ``kept`` items and its oldest jobs' omission be flagged here. Not excused: the
    # chaos publishers send plain JSON only (a checker for other publishers would need
    # the state's own size).
    full = len(held) >= kept
    above = min(held.values()) if full else 0
    for job, latest in know.latest_jobs(sid[0], sid[1], above).items():
        if job not in held:
            out.append(f"omits job {job} (its event {sid[0]}:{latest})")
        elif held[job] < latest:
            out.append(f"holds job {job} at {sid[0]}:{held[job]}, its event {sid[0]}:{latest} "
                       "is newer")
    return out


def _item(item: Any, sid: Offset, know: Knowledge, held: dict[str, int]) -> str | None:
    """One item's problem (None: none); a good one is noted in ``held``."""
    d = durable_id(item.get("id")) if isinstance(item, dict) else None
    if d is None or not isinstance(item, dict) or not isinstance(item.get("job"), str | int):
        return f"malformed item {str(item)[:120]}"
    job, event_id = str(item["job"]), item["id"]
    if d[0] != sid[0] or d[1] > sid[1]:
        return f"holds job {job} at {event_id}, past the snapshot's own id"
    if job in held:
        return f"holds job {job} twice"
    kinds = know.kinds_at(d)  # a lost write's too: the snapshot may be read before the loss
    if d not in know.uncertain and kinds and (item.get("event"), job) not in kinds:
        them = ", ".join(f"{e} of job {j}" for e, j in sorted(kinds, key=str))
        return f"holds job {job} at {event_id} as {item.get('event')}; Redis gave that id {them}"
    got, given = ident_of(item.get("data")), know.events_at(d)
    if got is not None and given and got not in given:
        return f"holds {got} at {event_id}; Redis gave that id {sorted(given)}"
    held[job] = d[1]
    return None
