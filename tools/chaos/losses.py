"""Lost writes (:class:`~tools.chaos.knowledge.LostWrite`): which fault explains
each, and their rows in the report. Pure code, no I/O.

A fault explains a lost write when it can lose acknowledged writes
(``Fault.lossy``: a cluster failover or a cluster primary frozen until its
replica took over, as Redis Cluster replicates asynchronously -- a freeze its
primary outlived loses nothing; a restart that wipes a single Redis) and the
write was acknowledged from ``before_s`` (a few seconds, ``Settings``) before
it to just after it ended. The single profile's Redis runs with AOF
(``appendfsync everysec``) and is restarted with SIGTERM, which writes the AOF
out: a lost write there, outside a wiping restart, is an anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .knowledge import LostWrite
from .records import Fault

__all__ = ["Loss", "explain", "report_rows"]


@dataclass(frozen=True, slots=True)
class Loss:
    write: LostWrite
    fault: Fault | None  # the lossy fault around its acknowledgement (None: unexplained)

    def now(self) -> str:
        """What the id stands for now, in words."""
        w = self.write
        if w.found is None:
            return "Redis holds no event there now"
        return f"{'acknowledged again' if w.reused else 'Redis holds'} for {w.found}"


def explain(write: LostWrite, faults: Sequence[Fault], before_s: float) -> Loss:
    fault = next((x for x in faults if x.lossy and x.start - before_s <= write.acked
                  <= x.end + 1.0), None)
    return Loss(write, fault)


def report_rows(losses: Sequence[Loss], t0: float) -> list[dict[str, Any]]:
    """The report's ``lost_writes``: times in seconds since ``t0``."""
    out = []
    for x in losses:
        w, f = x.write, x.fault
        out.append({"merchant": w.merchant, "id": f"{w.offset[0]}:{w.offset[1]}",
                    "acknowledged_for": list(w.ident), "acknowledged": round(w.acked - t0, 3),
                    "now": w.found and list(w.found), "reused": w.reused,
                    "received_only": w.received,
                    "fault": f and {"kind": f.kind, "target": f.target, "detail": f.detail,
                                    "start": round(f.start - t0, 3),
                                    "end": round(f.end - t0, 3)}})
    return out
