"""The summary line and the JSON report of a run."""

from __future__ import annotations

import bisect
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checker import Anomaly
from .inputs import Inputs, save
from .losses import Loss, report_rows
from .records import ClientLog, Fault, Frame, Published
from .storms import StormRecord

__all__ = ["Result", "summary", "write_report"]


@dataclass(slots=True)
class Result:
    seed: int
    profile: str
    duration: float
    clients: list[ClientLog]
    published: list[Published]
    faults: list[Fault]
    anomalies: list[Anomaly]
    t0: float
    wall_s: float = 0.0
    converged: bool = True
    storms: list[StormRecord] = field(default_factory=list)
    herd: str = "same"
    burst_max: int = 200
    losses: list[Loss] = field(default_factory=list)  # lost writes, explained or not
    inputs: Inputs | None = None  # what the checker read, saved beside the report

    @property
    def events(self) -> int:
        return len(self.published)


def faults_near(faults: list[Fault], t: float, span: float = 15.0) -> list[Fault]:
    """The faults within ``span`` seconds of ``t``."""
    return [f for f in faults if f.start - span <= t <= f.end + span]


def summary(r: Result) -> str:
    return (f"chaos: seed {r.seed}, {r.events} events, {len(r.clients)} clients, "
            f"{len(r.faults)} faults, {len(r.anomalies)} anomalies, "
            f"{len(r.losses)} lost writes")


def lost_lines(r: Result, limit: int = 20) -> list[str]:
    """One line per lost write (at most ``limit``), times since the load started."""
    out = []
    for x in r.losses[:limit]:
        w, f = x.write, x.fault
        where = (f"in {f.kind} {f.detail or f.target} ({f.start - r.t0:.1f}-"
                 f"{f.end - r.t0:.1f} s)" if f else "ANOMALY: no fault that can lose it")
        how = "received (never acknowledged)" if w.received else "acknowledged"
        out.append(f"chaos: lost write {w.merchant} {w.offset[0]}:{w.offset[1]} {how} "
                   f"for {w.ident} at {w.acked - r.t0:.1f} s, {x.now()}; {where}")
    if len(r.losses) > limit:
        out.append(f"chaos: ... {len(r.losses) - limit} more lost writes in the report")
    return out


def _rel(value: float, t0: float) -> float:
    return round(value - t0, 3)


def _shift(obj: dict[str, Any], t0: float, *keys: str) -> dict[str, Any]:
    return {k: (_rel(v, t0) if k in keys and isinstance(v, float) else v) for k, v in obj.items()}


def _around(published: list[Published], t: float, t0: float,
            span: float = 3.0) -> list[list[Any]]:
    """The merchant's publishes sent within ``span`` s before ``t`` (and 1 s after):
    [publisher, seq, event, sent, acked, id], at most 80, the latest kept."""
    times = [p.sent for p in published]
    lo, hi = bisect.bisect_left(times, t - span), bisect.bisect_right(times, t + 1.0)
    return [[p.publisher, p.seq, p.event, _rel(p.sent, t0),
             None if p.acked is None else _rel(p.acked, t0), p.id]
            for p in published[max(lo, hi - 80):hi]]


def _reason(f: Frame) -> Any:
    """A resync frame's reason (None: its data is no JSON object with one)."""
    data = f.payload()
    return data.get("reason") if isinstance(data, dict) else None


def write_report(r: Result, path: Path, limit: int = 50,
                 stamp: dict[str, str] | None = None) -> None:
    """The JSON report: times in seconds since the load started; each anomaly (at most
    ``limit``) with its client's frames around it, its sessions, the faults near it and
    its merchant's publishes just before it (what each was acknowledged with);
    ``stamp``: the commit the run ran at and its diffs (``record.provenance``). What the
    checker read goes beside it (``REPORT.inputs.json.gz``: :mod:`tools.chaos.recheck`)."""
    saved = None
    if r.inputs is not None:
        saved = path.with_suffix(".inputs.json.gz")
        save(r.inputs, saved)
    by_name = {c.name: c for c in r.clients}
    sent: dict[str, list[Published]] = {}
    for p in sorted(r.published, key=lambda p: p.sent):
        sent.setdefault(p.merchant, []).append(p)
    anomalies = []
    for a in r.anomalies[:limit]:
        c = by_name.get(a.client)
        sessions = [_shift(s.to_json(), r.t0, "started", "ended")
                    for s in c.sessions[max(0, a.session - 5): a.session + 2]] if c else []
        frames = [[_rel(f[0], r.t0), *f[1:]] for f in a.frames]
        anomalies.append({**a.to_json(), "t": _rel(a.t, r.t0), "frames": frames,
                          "sessions": sessions, "seed": r.seed,
                          "faults": [_shift(f.to_json(), r.t0, "start", "end")
                                     for f in faults_near(r.faults, a.t)],
                          "published": _around(sent.get(a.merchant, []), a.t, r.t0)})
    ends = Counter(s.end.split(":")[0] for c in r.clients for s in c.sessions)
    doc = {
        "summary": summary(r),
        "seed": r.seed,
        "profile": r.profile,
        "duration_s": r.duration,
        "wall_s": round(r.wall_s, 1),
        "replay": f"python -m tools.chaos --seed {r.seed} --duration {r.duration:g} "
                  f"--profile {r.profile} --clients {len(r.clients)} --herd {r.herd} "
                  f"--burst-max {r.burst_max}",
        "converged": r.converged,
        "provenance": stamp,
        "inputs": saved and saved.name,
        # wall-clock time of t=0, to find a moment in the gateway logs beside the report
        "t0_utc": datetime.fromtimestamp(time.time() - (time.monotonic() - r.t0), UTC)
        .isoformat(timespec="milliseconds"),
        "events": {"published": r.events,
                   "durable_acked": sum(1 for p in r.published if p.id),
                   "plain": sum(1 for p in r.published if not p.durable),
                   "unacknowledged": sum(1 for p in r.published if p.durable and not p.id),
                   "received": sum(len(s.frames) for c in r.clients for s in c.sessions)},
        "sessions": dict(ends),
        "frames": dict(Counter(
            f.event if f.event != "resync" else f"resync:{_reason(f)}"
            for c in r.clients for s in c.sessions for f in s.frames
            if f.event not in ("progress", "stage", "completion", "error"))),
        "faults": [_shift(f.to_json(), r.t0, "start", "end") for f in r.faults],
        "storms": [s.to_json(r.t0) for s in r.storms],
        "lost_writes": report_rows(r.losses, r.t0),
        "anomaly_kinds": dict(Counter(a.kind for a in r.anomalies)),
        "anomalies": anomalies,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
