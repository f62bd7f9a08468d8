"""What a run logs: client frames and sessions, publishes, faults. Plain data, no I/O.

Every time is ``time.monotonic()`` of the chaos process, so frames, publishes
and faults share one clock. The checker (:mod:`tools.chaos.checker`) reads
only these records, so synthetic logs test it without any process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MERCHANT_EVENTS", "ClientLog", "Fault", "Frame", "Published", "Session", "durable_id"]

MERCHANT_EVENTS = frozenset(("progress", "stage", "completion", "error"))


def durable_id(text: object) -> tuple[str, int] | None:
    """(epoch, offset) of a durable id ``EPOCH:OFFSET``; None for a plain or no id, or
    anything not a string (a snapshot item's ``id`` is whatever JSON the frame held)."""
    if not isinstance(text, str) or text.count(":") != 1:
        return None
    epoch, _, offset = text.partition(":")
    if not epoch or not offset.isdigit():
        return None
    return epoch, int(offset)


@dataclass(slots=True)
class Frame:
    """One dispatched SSE event as the client saw it."""

    t: float
    event: str
    id: str | None
    data: str

    def payload(self) -> Any:
        """The data as JSON, or None when it is not JSON (or nested too deep to parse)."""
        try:
            return json.loads(self.data)
        except (ValueError, RecursionError):
            return None

    def to_json(self) -> list[Any]:
        return [round(self.t, 3), self.event, self.id, self.data[:160]]


@dataclass(slots=True)
class Session:
    """One HTTP request of a client: what it sent, what came back, how it ended."""

    started: float
    last_event_id: str | None
    via: str  # "header", "query" or "" (no id sent)
    entry: str  # which address: "nginx", "workers"
    status: int | None = None  # None: no HTTP answer (connection refused, timeout)
    frames: list[Frame] = field(default_factory=list)
    ended: float | None = None
    end: str = ""  # "reconnect" (the client chose to), "eof", "error:...", "final",
    # "steered" (a storm moved it), "jump" (it left right after a burst event)
    jumped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"started": round(self.started, 3), "lastEventId": self.last_event_id,
                "via": self.via, "entry": self.entry, "status": self.status,
                "ended": None if self.ended is None else round(self.ended, 3), "end": self.end,
                "frames": len(self.frames)}


@dataclass(slots=True)
class ClientLog:
    """All sessions of one client (one browser tab), in order."""

    name: str
    merchant: str
    sessions: list[Session] = field(default_factory=list)


@dataclass(slots=True)
class Published:
    """One event a publisher sent. ``id`` is the durable id it was acknowledged with
    (None: plain, or the publish failed or timed out: it may still have happened);
    ``refused``: it surely did not (Redis or the gateway answered that nothing of it
    was recorded, or it was never sent)."""

    publisher: str
    seq: int
    merchant: str
    event: str
    job: str | None
    durable: bool
    sent: float
    acked: float | None = None
    id: str | None = None
    refused: bool = False


@dataclass(slots=True)
class Fault:
    """One injected fault, from its first action to the moment all was running again.

    ``redis``: it touches Redis (resyncs expected); ``lossy``: acknowledged durable
    writes, or the whole history, may be lost (``schedule.LOSSY_FAULTS``: a restart
    without persistence, a cluster failover or a cluster primary's freeze); ``target``:
    the gateway name it hit; ``sigterm``: streams got ``shutdown``.
    """

    kind: str
    target: str
    start: float
    end: float
    redis: bool = False
    lossy: bool = False
    sigterm: bool = False
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "start": round(self.start, 3),
                "end": round(self.end, 3), "lossy": self.lossy, "detail": self.detail}
