"""The delivery invariant, checked over logged frames: pure code, no I/O.

Per client (one tab), over all its sessions, with a *baseline*: the last
durable id it received, which only a ``resync`` clears (a ``snapshot`` sets it
to its own id). Anomalies:

- ``duplicate``: a durable id received twice with the same data (any sessions);
  ``id_reuse``: twice with other data, unless a lossy fault (history lost, e.g. a
  failover that dropped acknowledged writes) came between the two receipts.
- ``reorder``: a durable id of the baseline's epoch at or below the baseline.
- ``epoch_change``: a durable id of another epoch while a baseline is held
  (a new epoch must come after ``resync``).
- ``gap``: an offset between the baseline and the next durable id not received,
  unless it is a ``progress`` of a job whose newer ``progress`` this session
  delivered at or after that point (coalescing). With no baseline (first session,
  or after ``resync``), every durable event *sent* after the client read its
  ``connected``/``resync`` frame is owed: the gateway subscribes before either.
- ``missing_at_end``: the run ends quiescent; a client whose last session is still
  open must hold its merchant's head (the gap rule up to Redis' final head).
- ``unexplained_resync``: ``redis_reconnected`` needs a Redis fault around it;
  ``history_gap`` needs one of: the Last-Event-ID sent was plain (process-local,
  honoured only by the ring of the process that issued it), a Redis fault around
  the session's start, a lossy fault since the id was received, or a trimmed
  history (more than ``sse.history`` events published after the id).
- ``unexplained_shutdown`` (no SIGTERM around it), ``revoked`` (never expected),
  ``plain_repeat`` (a plain event's data twice in one session).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import MERCHANT_EVENTS, ClientLog, Fault, Frame, Published, Session, durable_id

__all__ = ["Anomaly", "Settings", "check"]

Offset = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Settings:
    history: int = 100  # sse.history
    redis_before_s: float = 1.0  # a Redis fault explains resyncs from this long before it
    redis_after_s: float = 10.0  # ... to this long after it ended (reconnect backoff, canary)
    shutdown_after_s: float = 2.0


@dataclass(slots=True)
class Anomaly:
    kind: str
    client: str
    merchant: str
    session: int
    frame: int
    t: float
    message: str
    frames: list[list[Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "client": self.client, "merchant": self.merchant,
                "session": self.session, "frame": self.frame, "t": round(self.t, 3),
                "message": self.message, "frames": self.frames}


class Knowledge:
    """What is known of a merchant's durable events: type, job, send time, by offset."""

    def __init__(self) -> None:
        self.kind: dict[Offset, tuple[str, str | None]] = {}
        self.sent: dict[str, list[tuple[int, float]]] = defaultdict(list)  # epoch -> sorted
        self.seen_at: dict[Offset, float] = {}  # earliest receipt by any client, or send time
        self.unacked: list[float] = []  # send times of durable publishes without an id

    def upper_head(self, epoch: str, t: float) -> int:
        """At most how far the epoch's offsets had reached at ``t`` (generous)."""
        known = [o for (e, o), at in self.seen_at.items() if e == epoch and at <= t]
        return max(known, default=0) + sum(1 for s in self.unacked if s <= t)

    def sent_after(self, epoch: str, t: float, below: int, above: int = 0) -> list[int]:
        """Offsets of the epoch acknowledged to publishers that sent them after ``t``."""
        return [o for o, s in self.sent.get(epoch, ()) if s > t and above < o < below]


def job_of(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("jobId"), str | int):
        return str(data["jobId"])
    return None


def learn(published: Iterable[Published], clients: Iterable[ClientLog],
          history: dict[str, dict[Offset, tuple[str, str | None]]]) -> dict[str, Knowledge]:
    """Every source of what each durable offset was: acks, receipts, Redis' final history."""
    out: dict[str, Knowledge] = defaultdict(Knowledge)
    for p in published:
        k = out[p.merchant]
        d = durable_id(p.id)
        if d is not None:
            k.kind[d] = (p.event, p.job)
            k.sent[d[0]].append((d[1], p.sent))
            k.seen_at[d] = min(k.seen_at.get(d, p.sent), p.sent)
        elif p.durable:
            k.unacked.append(p.sent)
    for c in clients:
        k = out[c.merchant]
        for s in c.sessions:
            for f in s.frames:
                d = durable_id(f.id)
                if d is not None and f.event in MERCHANT_EVENTS:
                    k.kind.setdefault(d, (f.event, job_of(f.payload())))
                    k.seen_at[d] = min(k.seen_at.get(d, f.t), f.t)
    for merchant, entries in history.items():
        for d, kind in entries.items():
            out[merchant].kind.setdefault(d, kind)
    for k in out.values():
        for offsets in k.sent.values():
            offsets.sort()
    return out


class _Client:
    """The walk over one client's sessions."""

    def __init__(self, log: ClientLog, know: Knowledge, faults: Sequence[Fault],
                 settings: Settings, final_head: Offset | None) -> None:
        self.log, self.know, self.faults, self.settings = log, know, faults, settings
        self.final_head = final_head
        self.anomalies: list[Anomaly] = []
        self.baseline: Offset | None = None
        self.t_base = float("-inf")  # when the client had no baseline: its live point
        self.seen: dict[str, tuple[str, float]] = {}  # durable id -> (data, receipt time)
        self.received: set[Offset] = set()

    def flag(self, kind: str, si: int, fi: int, t: float, message: str) -> None:
        frames = self.log.sessions[si].frames if si < len(self.log.sessions) else []
        window = [f.to_json() for f in frames[max(0, fi - 20): fi + 10]]
        self.anomalies.append(Anomaly(kind, self.log.name, self.log.merchant, si, fi, t,
                                      message, window))

    def run(self) -> list[Anomaly]:
        sessions = self.log.sessions
        for si, session in enumerate(sessions):
            self.session(si, session)
        if sessions and sessions[-1].end == "final" and self.final_head is not None:
            last = sessions[-1]
            self.owed(len(sessions) - 1, len(last.frames), last.ended or 0.0, self.final_head,
                      last.frames, end=True)
        return self.anomalies

    def session(self, si: int, s: Session) -> None:
        plain: set[str] = set()
        for fi, f in enumerate(s.frames):
            if f.event == "connected":
                if self.baseline is None and self.t_base == float("-inf"):
                    self.t_base = f.t
            elif f.event == "resync":
                self.resync(si, fi, s, f)
                self.baseline, self.t_base = None, f.t
            elif f.event == "snapshot":
                self.baseline, self.t_base = durable_id(f.id), f.t
            elif f.event == "shutdown":
                if not self.near(f.t, lambda x: x.sigterm, 0.5, self.settings.shutdown_after_s):
                    self.flag("unexplained_shutdown", si, fi, f.t, "shutdown with no SIGTERM")
            elif f.event == "revoked":
                self.flag("revoked", si, fi, f.t, "revoked: merchants stay active in chaos runs")
            elif f.event in MERCHANT_EVENTS:
                d = durable_id(f.id)
                if d is None:
                    if f.data in plain:
                        self.flag("plain_repeat", si, fi, f.t, f"plain event twice: {f.data[:80]}")
                    plain.add(f.data)
                else:
                    self.durable(si, fi, s.frames, f, d)

    def durable(self, si: int, fi: int, frames: list[Frame], f: Frame, d: Offset) -> None:
        assert f.id is not None
        before = self.seen.get(f.id)
        if before is not None:
            if before[0] == f.data:
                self.flag("duplicate", si, fi, f.t, f"{f.id} received again")
            elif not self.near_span(before[1], f.t, lambda x: x.lossy):
                self.flag("id_reuse", si, fi, f.t, f"{f.id} again with other data")
            if self.baseline is None or self.baseline[0] != d[0] or self.baseline < d:
                self.baseline = d
            return
        self.seen[f.id] = (f.data, f.t)
        base = self.baseline
        if base is not None and base[0] != d[0]:
            self.flag("epoch_change", si, fi, f.t, f"{f.id} after {base[0]}:{base[1]}, no resync")
        elif base is not None and d[1] <= base[1]:
            self.flag("reorder", si, fi, f.t, f"{f.id} after {base[0]}:{base[1]}")
            return
        else:
            self.owed(si, fi, f.t, d, frames, end=False)
        self.baseline = d
        self.received.add(d)

    def owed(self, si: int, fi: int, t: float, upto: Offset, frames: list[Frame],
             end: bool) -> None:
        """Check the offsets before ``upto`` (and ``upto`` itself at the end) were received."""
        epoch, top = upto[0], upto[1] + (1 if end else 0)
        base = self.baseline
        if base is not None and base[0] == epoch:
            missing = [o for o in range(base[1] + 1, top) if (epoch, o) not in self.received]
        elif base is None:
            missing = [o for o in self.know.sent_after(epoch, self.t_base, top)
                       if (epoch, o) not in self.received]
        else:  # a baseline of another epoch at the end: the client missed a resync
            if end:
                self.flag("missing_at_end", si, fi, t, f"still on epoch {base[0]}, Redis at "
                          f"{epoch}:{upto[1]}")
            return
        missing = [o for o in missing if not self.coalesced(epoch, o, frames[fi:])]
        if missing:
            kind = "missing_at_end" if end else "gap"
            shown = ", ".join(str(o) for o in missing[:10])
            self.flag(kind, si, fi, t, f"{epoch}: offsets {shown}"
                      f"{' ...' if len(missing) > 10 else ''} ({len(missing)}) not received")

    def coalesced(self, epoch: str, offset: int, later: list[Frame]) -> bool:
        kind = self.know.kind.get((epoch, offset))
        if kind is None or kind[0] != "progress" or kind[1] is None:
            return False
        for f in later:
            d = durable_id(f.id)
            if f.event == "progress" and d and d[0] == epoch and d[1] > offset and (
                    job_of(f.payload()) == kind[1]):
                return True
        return False

    def resync(self, si: int, fi: int, s: Session, f: Frame) -> None:
        data = f.payload()
        reason = data.get("reason") if isinstance(data, dict) else None
        redis = self.near(f.t, lambda x: x.redis, self.settings.redis_before_s,
                          self.settings.redis_after_s)
        if reason == "redis_reconnected" and redis:
            return
        if reason == "history_gap" and self.gap_explained(s, f):
            return
        self.flag("unexplained_resync", si, fi, f.t,
                  f"resync {reason} after Last-Event-ID {s.last_event_id!r}, no fault explains it")

    def gap_explained(self, s: Session, f: Frame) -> bool:
        if not s.last_event_id:
            return False
        d = durable_id(s.last_event_id)
        if d is None:
            return True  # a plain id: honoured only by the ring of the process that issued it
        st = self.settings
        if self.near(s.started, lambda x: x.redis, 4.0, st.redis_after_s):
            return True  # the history could not be read (the read waits up to 3 s)
        got = self.seen.get(s.last_event_id, ("", s.started))[1]
        if self.near_span(got - 1.0, f.t, lambda x: x.lossy):
            return True  # the history (its epoch) may be gone
        return self.know.upper_head(d[0], f.t) - d[1] > st.history  # trimmed

    def near(self, t: float, what: Any, before: float, after: float) -> bool:
        return any(what(x) and x.start - before <= t <= x.end + after for x in self.faults)

    def near_span(self, lo: float, hi: float, what: Any) -> bool:
        return any(what(x) and x.start <= hi and x.end >= lo for x in self.faults)


def check(clients: Sequence[ClientLog], published: Sequence[Published], faults: Sequence[Fault],
          heads: dict[str, Offset | None], settings: Settings = Settings(),
          history: dict[str, dict[Offset, tuple[str, str | None]]] | None = None,
          ) -> list[Anomaly]:
    """Every anomaly of every client, in client order."""
    know = learn(published, clients, history or {})
    out: list[Anomaly] = []
    for c in clients:
        out += _Client(c, know[c.merchant], faults, settings, heads.get(c.merchant)).run()
    return out


def faults_near(faults: Sequence[Fault], t: float, span: float = 15.0) -> list[Fault]:
    """The faults within ``span`` seconds of ``t`` (for a report)."""
    return [f for f in faults if f.start - span <= t <= f.end + span]

