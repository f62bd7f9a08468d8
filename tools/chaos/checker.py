"""The delivery invariant, checked over logged frames: pure code, no I/O.

Per client (one tab), over all its sessions, with a *baseline*: the last
durable id it received, which only a ``resync`` clears (a ``snapshot`` sets it
to its own id). Anomalies:

- ``duplicate``: a durable id received twice with the same data (any sessions),
  except after a ``resync`` (and no ``snapshot`` since) in a session whose
  Last-Event-ID was plain or absent, when the first receipt came in an earlier
  session (the process could not tell what the tab had: a process reading Redis
  late may send again what the tab got elsewhere; what its own stream sent, it
  knows); ``id_reuse``: twice with other data, unless the id is a lost write's
  (Redis gave it another event) and a ``resync`` came between the two receipts
  (after one, the id stands for its new event).
- ``reuse_missed``: the client holds a lost write's event under an id Redis gave
  another event, and receives a later event that Redis kept with no ``resync``
  since: the event now under that id never reached it.
- ``reorder``: a durable id of the baseline's epoch at or below the baseline.
- ``epoch_change``: a durable id of another epoch while a baseline is held
  (a new epoch must come after ``resync``).
- ``gap``: an offset between the baseline and the next durable id not received,
  unless it is a ``progress`` of a job with a newer ``progress`` published by the
  time the gap showed (the receipt of the frame that revealed it: coalescing drops
  a queued event only for a newer one queued before it was written out) that this
  session delivered at or after that point (or one newer still), or a later
  ``snapshot`` holds the job at or past it (it then made way for the snapshot). With
  no baseline (first session, or after ``resync``), every durable event *sent*
  after the client read its ``connected``/``resync`` frame is owed (the
  ``connected`` of its latest session without Last-Event-ID: nothing sent before
  it is replayed to such a session): the gateway subscribes before either.
- ``missing_at_end``: the run ends quiescent; a client whose last session is still
  open must hold its merchant's head (the gap rule up to Redis' final head).
- ``unexplained_resync``: ``redis_reconnected`` needs a Redis fault around it;
  ``history_gap`` needs one of: the Last-Event-ID sent was plain (process-local,
  honoured only by the ring of the process that issued it), a Redis fault around
  the session's start, a lossy fault since the id was received, a trimmed
  history (more than ``sse.history`` events published after the id), or an
  expired one (no durable publish to the merchant for ``redis.history_ttl``).
- ``late_resync``: a gap, but the session's first ``resync`` (``history_gap``)
  is still to come: the stream sent events (queued while its replay was tried)
  before the ``resync`` that announces what they skipped.
- ``wrong_event``, ``two_ids``: an id brought an event Redis never gave it, or one
  event came under two ids (:mod:`tools.chaos.identity`).
- ``downgraded``: a missing offset whose event (its publisher and sequence
  number) this client received as a *plain* event: delivered, but under a
  process-local id, so no other process can resume after it.
- ``lost_write`` (per merchant): an acknowledged durable event Redis lost (its id
  acknowledged again for another event, or Redis' final history holds another
  event there, or none though it reaches back past it) with no lossy fault
  around its acknowledgement (:mod:`tools.chaos.losses`). With one (a cluster
  failover, or a primary frozen until its replica took over: Redis Cluster
  replicates asynchronously) it is explained, not an anomaly, but counted and
  listed in the report; a client missing an id no acknowledged event holds any
  more is not a ``gap``.
- ``snapshot_content``: a ``snapshot`` whose jobs are not each job's latest event
  at or below its id (:mod:`tools.chaos.snapshots`), or whose id is below a
  durable id the session received before it (since its ``resync``).
- ``unannounced_snapshot``: a ``snapshot`` that no ``resync`` or fresh connect
  announced: its id may skip durable events, and only a ``resync`` may announce
  that. One snapshot per ``resync`` (live events may come between the two: they
  arrive before the streams are held for it), or one right after ``connected``
  in a session without a Last-Event-ID, before any durable event.
- ``unexplained_shutdown`` (no SIGTERM of its gateway while the session was open),
  ``revoked`` (never expected),
  ``plain_repeat`` (a plain event's data twice in one session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .excuses import Excuses, Settings
from .identity import Identities
from .knowledge import Held, Ident, Kind, ident_of, job_of, learn
from .losses import Loss
from .records import MERCHANT_EVENTS, ClientLog, Fault, Frame, Published, Session, durable_id
from .scan import queued_first, resync_follows, shown, snapshot_has
from .snapshots import snapshot_problems

__all__ = ["Anomaly", "Settings", "check"]

Offset = tuple[str, int]
DEFAULTS = Settings()  # check()'s settings unless given (frozen: one shared instance)


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


class _Client:
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
        self.plain: set[Ident] = set()  # identities of the plain events received
        self.ids = Identities(self.know)
        self.resynced_blind = False  # this session resynced on a plain id (or none)
        self.last_resync = float("-inf")
        self.stale: dict[Offset, str] = {}  # ids held as a lost write's event, since last resync
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
        if sessions and sessions[-1].end == "final" and self.final_head is not None:
            last = sessions[-1]
            self.owed(len(sessions) - 1, len(last.frames), last.ended or 0.0, self.final_head,
                      last.frames, end=True)
        return self.anomalies

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
                self.stale.clear()
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
                    if (ident := ident_of(f.payload())) is not None:
                        self.plain.add(ident)
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
                self.stale.pop(d, None)
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
        self.reuse(si, fi, f, d, got)
        lost = d in self.know.vanished or (d in self.know.lost and got is not None
                                           and got != self.know.ident.get(d))
        if not lost and (self.live_top is None or self.live_top[0] != d[0] or self.live_top < d):
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

    def reuse(self, si: int, fi: int, f: Frame, d: Offset, got: Ident | None) -> None:
        """Note an id received as a lost write's event that Redis gave another event;
        a later event Redis kept, with no resync since, shows that one was skipped."""
        now = self.know.ident.get(d)
        if d in self.know.lost and d not in self.know.vanished and got is not None \
                and got != now:
            self.stale[d] = f.id
            return
        if d in self.know.vanished or (got is not None and got != now):
            return  # a lost write Redis gave no acknowledged event: nothing newer follows it
        for o in [o for o in self.stale if o[0] == d[0] and o[1] < d[1]]:
            self.flag("reuse_missed", si, fi, f.t, f"{self.stale.pop(o)} was a lost write's "
                      f"event here; the event Redis gave that id never came before {f.id}, "
                      "no resync")

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
        missing = [o for o in missing if not self.coalesced(epoch, o, frames[fi:], t)
                   and (epoch, o) not in self.excuses.lost]
        plain = [o for o in missing if self.know.ident.get((epoch, o)) in self.plain]
        if plain:
            self.flag("downgraded", si, fi, t, f"{epoch}: offsets {shown(plain)} received as "
                      "plain events (under process-local ids)")
            missing = [o for o in missing if o not in plain]
        if missing:
            kind = "missing_at_end" if end else "late_resync" if resync_follows(
                frames[fi + 1:]) else "gap"
            self.flag(kind, si, fi, t, f"{epoch}: offsets {shown(missing)} not received"
                      f"{' before the resync' if kind == 'late_resync' else ''}")

    def coalesced(self, epoch: str, offset: int, later: list[Frame], t: float) -> bool:
        """Whether a skipped ``progress`` was coalesced: a queued event is dropped only for
        a newer ``progress`` of its job queued behind it before it was written out, so
        that one was published by ``t``, when the frame showing the gap arrived; it (or a
        newer one that replaced it in turn) then comes later in the session, or a later
        snapshot holds the job at or past it (it made way for the snapshot)."""
        kind = self.know.kind.get((epoch, offset))
        if kind is None or kind[0] != "progress" or kind[1] is None:
            return False
        newer = self.know.newer_progress(epoch, kind[1], offset, t)
        if newer is None:
            return False
        for f in later:
            d = durable_id(f.id)
            if f.event == "progress" and d and d[0] == epoch and d[1] >= newer and (
                    job_of(f.payload()) == kind[1]):
                return True
            if f.event == "snapshot" and snapshot_has(f, kind[1], epoch, newer - 1):
                return True
        return False

    def resync(self, si: int, fi: int, s: Session, f: Frame) -> None:
        data = f.payload()
        reason = data.get("reason") if isinstance(data, dict) else None
        if not self.excuses.resync(reason, s, f, self.got_at):
            self.flag("unexplained_resync", si, fi, f.t, f"resync {reason} after Last-Event-ID "
                      f"{s.last_event_id!r}, no fault explains it")


def check(clients: Sequence[ClientLog], published: Sequence[Published], faults: Sequence[Fault],
          heads: dict[str, Offset | None], settings: Settings = DEFAULTS,
          history: dict[str, dict[Offset, Held]] | None = None,
          losses: list[Loss] | None = None,
          seen: dict[str, dict[Offset, set[Kind]]] | None = None) -> list[Anomaly]:
    """Every anomaly: per merchant (lost writes no lossy fault explains), then per client
    in client order. ``losses`` collects every lost write (for the report)."""
    know = learn(published, clients, history or {}, seen)
    out: list[Anomaly] = []
    excuses = {merchant: Excuses(faults, settings, k) for merchant, k in sorted(know.items())}
    for merchant, e in excuses.items():
        if losses is not None:
            losses += e.losses
        for x in e.losses:
            if x.fault is None:
                w = x.write
                how = "received (never acknowledged)" if w.received else "acknowledged"
                out.append(Anomaly("lost_write", "-", merchant, -1, -1, w.acked,
                                   f"{w.offset[0]}:{w.offset[1]} {how} for {w.ident}, "
                                   f"{x.now()}, and no fault that can lose acknowledged "
                                   "writes came around it"))
    for c in clients:
        out += _Client(c, excuses[c.merchant], heads.get(c.merchant)).run()
    return out
