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

__all__ = [
    "JOB_MAX", "KEY_PATTERN", "SEQ_MAX", "JobRecord", "job_in_data", "job_in_payload",
    "job_of", "snapshot_payload", "valid_key", "valid_seq",
]

JOB_MAX = 128  # characters of a job's text
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # an idempotency key
SEQ_MAX = 10**15 - 1  # the publish script takes up to 15 digits


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
    if not 1 <= len(text) <= JOB_MAX:
        return None
    try:  # a lone surrogate (a JSON escape "\ud800" in a text payload) names no job
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def valid_seq(seq: object) -> bool:
    """An event's `seq`: an integer from 0 to SEQ_MAX (what the publish script takes)."""
    return isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= SEQ_MAX


def valid_key(key: object) -> bool:
    """An idempotency key: 1-128 characters of A-Z a-z 0-9 _ . : -."""
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


def job_in_data(data: Any, payload: bytes, job_key: str) -> str:
    """The job of an event whose `data` is published as `payload`; '' for none. A string
    is published as its text, which names a job when it is a JSON object."""
    job = job_in_payload(payload, job_key) if isinstance(data, str) else job_of(data, job_key)
    return job or ""


def job_in_payload(payload: bytes, job_key: str) -> str | None:
    """The job a payload as published names, when it is a JSON object (a string
    `data` whose text is one names a job too: the browser gets that object)."""
    if not payload.lstrip().startswith(b"{"):
        return None
    try:
        return job_of(json.loads(payload), job_key)
    except (ValueError, RecursionError):
        return None


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


# strict: a browser's JSON.parse refuses NaN and Infinity, and UTF-8 has no lone surrogate
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def snapshot_payload(
    records: Iterable[JobRecord], epoch: str, job_key: str, kept: int
) -> bytes | None:
    """The `snapshot` frame's data: the `kept` most recently updated jobs of `epoch`
    (fewer while the state still holds more after `sse.snapshot_jobs` was lowered),
    by id ascending; None when there is none. A job is shown as published: its
    payload's `job_key` value. A job whose payload has no strict JSON text (NaN, a
    lone surrogate: a publisher other than the HTTP API may record one) is left out,
    so it cannot make the whole frame unreadable."""
    ours = sorted((r for r in records if r.id.epoch == epoch), key=lambda r: r.id.offset)
    jobs = []
    for record in ours[-kept:]:
        try:
            payload = json.loads(record.payload)
            if isinstance(payload, dict):
                jobs.append(_STRICT.encode({
                    "job": payload.get(job_key, record.job), "event": record.event,
                    "id": str(record.id), "data": payload}).encode("utf-8"))
        except (ValueError, RecursionError, UnicodeEncodeError):
            continue
    return b'{"jobs":[' + b",".join(jobs) + b"]}" if jobs else None
