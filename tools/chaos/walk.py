"""The walk over one tab's sessions that finds the anomalies :mod:`tools.chaos.checker`
lists. Pure code, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .excuses import Excuses
from .identity import Identities
from .knowledge import ident_of
from .records import MERCHANT_EVENTS, ClientLog, Frame, Session, durable_id
from .scan import coalesced, queued_first, resync_follows, shown
from .snapshots import snapshot_problems

__all__ = ["Anomaly", "Tab"]

Offset = tuple[str, int]


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


class Tab:
    """The walk over one client's sessions."""

    def __init__(self, log: ClientLog, excuses: Excuses, final_head: Offset | None) -> None:
        self.log, self.excuses, self.know = log, excuses, excuses.know
        self.final_head = final_head
        self.anomalies: list[Anomaly] = []
        self.baseline: Offset | None = None
        self.t_base = float("-inf")  # when the client had no baseline: its live point
        self.seen: dict[str, tuple[str, float]] = {}  # durable id -> (data, receipt time)
        self.got_at: dict[str, float] = {}  # id of a durable event or snapshot -> receipt
        self.received: set[Offset] = set()
        self.ids = Identities(self.know)
        self.resynced_blind = False  # this session resynced on a plain id (or none)
        self.last_resync = float("-inf")
        self.live_top: Offset | None = None  # newest id since the connect or resync (not lost)

    def flag(self, kind: str, si: int, fi: int, t: float, message: str) -> None:
        frames = self.log.sessions[si].frames if si < len(self.log.sessions) else []
        window = [f.to_json() for f in frames[max(0, fi - 20): fi + 10]]
        self.anomalies.append(Anomaly(kind, self.log.name, self.log.merchant, si, fi, t,
                                      message, window))

    def run(self) -> list[Anomaly]:
        sessions = self.log.sessions
        for si, session in enumerate(sessions):
            self.session(si, session)
        if sessions and self.final_head is not None:
            self.end(len(sessions) - 1, sessions[-1], self.final_head)
        return self.anomalies

    def end(self, si: int, last: Session, head: Offset) -> None:
        """The run ended quiescent, after waiting for every tab to hold its merchant's
        head (however its last session ended): each holds every event up to the head,
        none past it, and no lost write's event whose id Redis gave another."""
        fi, t = len(last.frames), last.ended or last.started
        base = self.baseline
        if base is not None and base[0] == head[0] and base[1] > head[1]:
            self.flag("missing_at_end", si, fi, t, f"holds {base[0]}:{base[1]}, past Redis' "
                      f"final head {head[0]}:{head[1]}, with no resync since")
        for o, held in sorted(self.ids.stale.items()):
            if o[0] == head[0] and o[1] <= head[1]:
                self.flag("missing_at_end", si, fi, t, f"{held} was a lost write's event "
                          "here; the event Redis gave that id never came, no resync")
        self.owed(si, fi, t, head, last.frames, end=True)

    def session(self, si: int, s: Session) -> None:
        plain: set[str] = set()
        self.resynced_blind = False
        announced = "nothing"  # what may announce a snapshot: "connected", "resync"
        for fi, f in enumerate(s.frames):
            if f.event in ("connected", "resync"):
                announced = f.event
            elif f.event in MERCHANT_EVENTS and announced == "connected" \
                    and durable_id(f.id) is not None:
                announced = "a durable event"
            if f.event in ("connected", "resync"):
                self.live_top = None
            if f.event == "connected":
                # no baseline: owed is what was sent after this live point; a session
                # without Last-Event-ID is owed nothing sent before its own connect
                if self.baseline is None and (self.t_base == float("-inf")
                                              or not s.last_event_id):
                    self.t_base = f.t
            elif f.event == "resync":
                self.resync(si, fi, s, f)
                self.baseline, self.t_base = None, f.t
                self.last_resync = f.t
                self.ids.resynced()
                self.resynced_blind = durable_id(s.last_event_id) is None
            elif f.event == "snapshot":
                if announced == "connected" and s.last_event_id:
                    announced = "connected with a Last-Event-ID"
                if announced not in ("connected", "resync"):
                    self.flag("unannounced_snapshot", si, fi, f.t,
                              f"snapshot {f.id} announced by {announced}, not by a resync "
                              "or a connect without Last-Event-ID")
                announced = "a snapshot"  # the next needs a resync of its own
                self.snapshot(si, fi, f)
            elif f.event == "shutdown":
                if not self.excuses.terminated(s, f):
                    self.flag("unexplained_shutdown", si, fi, f.t, "shutdown with no SIGTERM")
            elif f.event == "revoked":
                self.flag("revoked", si, fi, f.t, "revoked: merchants stay active in chaos runs")
            elif f.event in MERCHANT_EVENTS:
                d = durable_id(f.id)
                if d is None:
                    if f.data in plain:
                        self.flag("plain_repeat", si, fi, f.t, f"plain event twice: {f.data[:80]}")
                    plain.add(f.data)
                    if (copy := self.ids.plain_event(ident_of(f.payload()))) is not None:
                        self.flag(copy[0], si, fi, f.t, copy[1])
                else:
                    self.durable(si, fi, s, f, d)

    def snapshot(self, si: int, fi: int, f: Frame) -> None:
        """Its content (:mod:`tools.chaos.snapshots`), and its id: at least every id the
        session received since the resync (the state is read after those came)."""
        sid, top = durable_id(f.id), self.live_top
        problems = snapshot_problems(f, self.know, self.excuses.settings.snapshot_jobs)
        behind = sid is not None and top is not None and top[0] == sid[0] and top > sid
        if behind:
            assert top is not None
            problems.append(f"its id is below {top[0]}:{top[1]}, received before it")
        if problems:
            more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
            self.flag("snapshot_content", si, fi, f.t,
                      f"snapshot {f.id}: {'; '.join(problems[:4])}{more}")
        self.baseline, self.t_base = (top if behind else sid), f.t
        if f.id is not None:
            self.got_at.setdefault(f.id, f.t)
        self.resynced_blind = False  # nothing at or below its id may follow

    def durable(self, si: int, fi: int, s: Session, f: Frame, d: Offset) -> None:
        assert f.id is not None
        frames = s.frames
        before = self.seen.get(f.id)
        # a lost write's id Redis gave another event, received again after a resync
        reused = before is not None and before[0] != f.data and before[1] < self.last_resync \
            and d in self.know.lost
        if before is not None and not reused:
            if before[0] == f.data and self.resynced_blind and before[1] < s.started:
                pass  # resynced on an id unreadable there: it cannot know what the tab had
                # before this session (what this stream sent, it knows)
            elif before[0] == f.data:
                self.flag("duplicate", si, fi, f.t, f"{f.id} received again"
                          f"{queued_first(frames[fi + 1:])}")
            else:
                self.flag("id_reuse", si, fi, f.t, f"{f.id} again with other data, no resync "
                          "between (a reused id delivered without resync)")
                self.ids.stale.pop(d, None)
            if self.baseline is None or self.baseline[0] != d[0] or self.baseline < d:
                self.baseline = d
            return
        self.seen[f.id] = (f.data, f.t)
        if reused:
            self.got_at[f.id] = f.t  # the id stands for its new event from here on
        self.got_at.setdefault(f.id, f.t)
        got = ident_of(f.payload())
        if (wrong := self.ids.received(d, f.id, got)) is not None:
            self.flag(wrong[0], si, fi, f.t, wrong[1])
        for held in self.ids.kept(d, f.id, got):
            self.flag("reuse_missed", si, fi, f.t, f"{held} was a lost write's event here; the "
                      f"event Redis gave that id never came before {f.id}, no resync")
        if not self.ids.lost_event(d, got) and (self.live_top is None
                                                or self.live_top[0] != d[0] or self.live_top < d):
            self.live_top = d
        base = self.baseline
        if base is not None and base[0] != d[0]:
            self.flag("epoch_change", si, fi, f.t, f"{f.id} after {base[0]}:{base[1]}, no resync"
                      f"{queued_first(frames[fi + 1:])}")
        elif base is not None and d[1] <= base[1]:
            self.flag("reorder", si, fi, f.t, f"{f.id} after {base[0]}:{base[1]}"
                      f"{queued_first(frames[fi + 1:])}")
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
        sessions = self.log.sessions
        resumed = sessions[si + 1] if not end and si + 1 < len(sessions) else None
        missing = [o for o in missing if not coalesced(self.know, epoch, o, frames[fi:], t,
                                                       resumed)
                   and (epoch, o) not in self.excuses.lost]
        plain = [o for o in missing if self.know.ident.get((epoch, o)) in self.ids.plain]
        if plain:
            self.flag("downgraded", si, fi, t, f"{epoch}: offsets {shown(plain)} received as "
                      "plain events (under process-local ids)")
            missing = [o for o in missing if o not in plain]
        if missing:
            kind = "missing_at_end" if end else "late_resync" if resync_follows(
                frames[fi + 1:]) else "gap"
            self.flag(kind, si, fi, t, f"{epoch}: offsets {shown(missing)} not received"
                      f"{' before the resync' if kind == 'late_resync' else ''}")

    def resync(self, si: int, fi: int, s: Session, f: Frame) -> None:
        data = f.payload()
        reason = data.get("reason") if isinstance(data, dict) else None
        if not self.excuses.resync(reason, s, f, self.got_at):
            self.flag("unexplained_resync", si, fi, f.t, f"resync {reason} after Last-Event-ID "
                      f"{s.last_event_id!r}, no fault explains it")
