"""Job state, pure code: the job a payload names, the records the publish script
keeps per job, and the `snapshot` frame built from them (docs/publishing.md,
"Job state").

The script keeps, per merchant, a hash of job -> record "ID\\nSEQ\\nENDED\\nEVENT\\nPAYLOAD"
(the job's latest durable event) and a sorted set of job -> offset that caps
the state at `sse.snapshot_jobs` jobs, the most recently updated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .ids import DurableId

__all__ = ["KEY_PATTERN", "JobRecord", "job_of", "snapshot_data"]

_JOB_MAX = 128
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # an idempotency key


def job_of(data: Any, job_key: str) -> str | None:
    """The job a payload names: its `job_key` field, a string of 1-128 characters
    or an integer, as text (so 7 and "7" are one job); None otherwise."""
    if not isinstance(data, dict):
        return None
    value = data.get(job_key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text if 1 <= len(text) <= _JOB_MAX else None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's latest durable event, as the publish script recorded it."""

    job: str
    id: DurableId
    event: str
    payload: bytes
    ended: bool

    @classmethod
    def parse(cls, job: bytes | str, raw: bytes | str) -> JobRecord | None:
        """The record the script wrote, None for anything else (never raises)."""
        text = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        parts = text.split(b"\n", 4)
        if len(parts) != 5:
            return None
        event_id = DurableId.parse(parts[0].decode("ascii", "replace"))
        if event_id is None or parts[2] not in (b"0", b"1"):
            return None
        name = job.decode("utf-8", "replace") if isinstance(job, bytes) else job
        return cls(name, event_id, parts[3].decode("utf-8", "replace"), parts[4], parts[2] == b"1")


def snapshot_data(records: Iterable[JobRecord], epoch: str, job_key: str) -> dict[str, Any] | None:
    """The `snapshot` frame's data, jobs by id ascending; None when there is no job
    of `epoch`. A job is shown as published: its payload's `job_key` value."""
    jobs = []
    for record in sorted((r for r in records if r.id.epoch == epoch), key=lambda r: r.id.offset):
        try:
            payload = json.loads(record.payload)
        except (ValueError, RecursionError):
            continue  # the script records only payloads that name a job: never here
        if not isinstance(payload, dict):
            continue
        jobs.append({"job": payload.get(job_key, record.job), "event": record.event,
                     "id": str(record.id), "data": payload})
    return {"jobs": jobs} if jobs else None
