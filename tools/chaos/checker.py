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
- ``reorder``: a durable id of the baseline's epoch at or below the baseline.
- ``epoch_change``: a durable id of another epoch while a baseline is held
  (a new epoch must come after ``resync``).
- ``gap``: an offset between the baseline and the next durable id not received,
  unless it is a ``progress`` of a job with a newer ``progress`` published by the
  time the gap showed (the receipt of the frame that revealed it: coalescing drops
  a queued event only for a newer one queued before it was written out) that this
  session delivered at or after that point (or one newer still), or the tab's next
  session did, resumed from an id before it (the stream was cut before writing it
  out), or a later ``snapshot`` holds the job at or past it (it then made way for the
  snapshot). With
  no baseline (first session, or after ``resync``), every durable event *sent*
  after the client read its ``connected``/``resync`` frame is owed (the
  ``connected`` of its latest session without Last-Event-ID: nothing sent before
  it is replayed to such a session): the gateway subscribes before either.
- ``missing_at_end``: the run ends quiescent, once every tab holds its merchant's
  head (or a bounded wait ran out): each tab, however its last session ended, must
  hold every event up to Redis' final head (the gap rule), none past it, and no
  lost write's event under an id Redis gave another with no ``resync`` since.
- ``not_converged`` (per run): some tab did not hold its head when that wait ran
  out (:func:`not_converged`).
- ``unexplained_resync``: ``redis_reconnected`` needs a Redis fault around it;
  ``history_gap`` needs one of: the Last-Event-ID sent was plain (process-local,
  honoured only by the ring of the process that issued it), a Redis fault around
  the session's start, a lossy fault since the id was received, a trimmed
  history (more than ``sse.history`` events published after the id), or an
  expired one (no durable publish to the merchant for ``redis.history_ttl``).
- ``late_resync``: a gap, but the session's first ``resync`` (``history_gap``)
  is still to come: the stream sent events (queued while its replay was tried)
  before the ``resync`` that announces what they skipped.
- ``wrong_event``, ``two_ids``, ``plain_copy``, ``reuse_missed``: an id brought an
  event Redis never gave it; one event came under two ids, or under its id and as a
  plain event (not a lost write's, plain after a ``resync``: a process still holding
  it delivers it so); the tab held a lost write's event under an id Redis gave
  another, and got a later event with no ``resync`` between (:mod:`tools.chaos.identity`).
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

from .excuses import Excuses, Settings
from .knowledge import Held, Kind
from .learning import learn
from .losses import Loss
from .records import ClientLog, Fault, Published
from .walk import Anomaly, Tab

__all__ = ["Anomaly", "Settings", "check", "not_converged"]

Offset = tuple[str, int]
DEFAULTS = Settings()  # check()'s settings unless given (frozen: one shared instance)


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
        out += Tab(c, excuses[c.merchant], heads.get(c.merchant)).run()
    return out


def not_converged(tabs: Sequence[str], t: float) -> list[Anomaly]:
    """The run's anomaly when ``tabs`` did not hold their merchant's head once the run's
    wait for it ran out (none when every tab did)."""
    if not tabs:
        return []
    shown = ", ".join(tabs[:10]) + (" ..." if len(tabs) > 10 else "")
    return [Anomaly("not_converged", "-", "-", -1, -1, t, f"{len(tabs)} tab(s) without their "
                    f"merchant's head when the quiet wait ran out: {shown}")]
