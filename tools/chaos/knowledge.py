"""What is known of each merchant's durable events, from every source: acks,
receipts, and Redis' final history. Pure code, no I/O; indexed so that a
30-minute run (hundreds of thousands of events) checks in seconds.

Events are named as in :mod:`tools.chaos.events` (re-exported here).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable

from .events import Ack, Held, Ident, Kind, LostWrite, ident_of, job_of
from .records import MERCHANT_EVENTS, ClientLog, Published, durable_id

__all__ = ["Ack", "Held", "Ident", "Kind", "Knowledge", "LostWrite", "ident_of", "job_of", "learn"]

Offset = tuple[str, int]


class Knowledge:
    """One merchant: type, job, identity, send and first-seen time of each offset."""

    def __init__(self) -> None:
        self.kind: dict[Offset, tuple[str, str | None]] = {}
        self.ident: dict[Offset, Ident] = {}  # the event an id stands for now
        self.acks: dict[Offset, list[Ack]] = defaultdict(list)  # every ack of each id
        self.lost: dict[Offset, list[LostWrite]] = {}
        self.lost_kinds: dict[Offset, set[Kind]] = {}  # (event, job) of each lost event
        self.vanished: set[Offset] = set()  # acknowledged ids Redis holds no event under now
        # ids whose event is in doubt: Redis holds none there now, or the history tap saw
        # another kind there (an event lost and its id given again, unacknowledged)
        self.uncertain: set[Offset] = set()
        self.seen_at: dict[Offset, float] = {}  # earliest receipt by any client, or send time
        self._sent: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._unacked: list[float] = []  # send times of durable publishes without an id
        self._maybe: list[float] = []  # ... of those not surely refused (they may have run)
        self._kept: dict[str, list[tuple[int, float]]] = defaultdict(list)  # (offset, sent)
        # of each acknowledged event Redis holds now, per epoch; by index(): the offsets and
        # the running max of those send times (when an id ran at the earliest)
        self._kept_offsets: dict[str, list[int]] = {}
        self._kept_max: dict[str, list[float]] = {}
        self._writes: list[float] = []  # send times of every durable publish (TTL refreshes)
        # per epoch, built by index(): offsets by offset with send times and their
        # running max; first-seen times sorted with the running max of offsets
        self._offsets: dict[str, list[int]] = {}
        self._times: dict[str, list[float]] = {}
        self._time_max: dict[str, list[float]] = {}
        self._seen_t: dict[str, list[float]] = {}
        self._seen_max: dict[str, list[int]] = {}
        self._progress: dict[tuple[str, str], list[int]] = {}  # (epoch, job) -> offsets
        self._job_events: dict[str, list[tuple[int, str]]] = {}  # epoch -> (offset, job)
        self._job_offsets: dict[str, list[int]] = {}

    def index(self) -> None:
        for epoch, sent in self._sent.items():
            sent.sort()
            self._offsets[epoch] = [o for o, _ in sent]
            self._times[epoch] = [s for _, s in sent]
            running, top = [], float("-inf")
            for _, s in sent:
                top = max(top, s)
                running.append(top)
            self._time_max[epoch] = running
        by_epoch: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for (epoch, offset), at in self.seen_at.items():
            by_epoch[epoch].append((at, offset))
        for epoch, pairs in by_epoch.items():
            pairs.sort()
            self._seen_t[epoch] = [t for t, _ in pairs]
            highest, best = [], 0
            for _, offset in pairs:
                best = max(best, offset)
                highest.append(best)
            self._seen_max[epoch] = highest
        progress: dict[tuple[str, str], list[int]] = defaultdict(list)
        jobs: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.uncertain |= self.vanished
        # a lost write's id: a snapshot read before the loss holds its lost event
        unsure = self.uncertain | self.lost.keys()
        for (epoch, offset), (_, job) in self.kind.items():
            for event, of in self.kinds_at((epoch, offset)):  # a lost progress made way too
                if event == "progress" and of is not None:
                    progress[(epoch, of)].append(offset)
            if job is not None and (epoch, offset) not in unsure:
                jobs[epoch].append((offset, job))
        self._progress = {key: sorted(offsets) for key, offsets in progress.items()}
        for epoch, events in jobs.items():
            events.sort()
            self._job_events[epoch] = events
            self._job_offsets[epoch] = [o for o, _ in events]
        for epoch, kept in self._kept.items():
            kept.sort()
            self._kept_offsets[epoch] = [o for o, _ in kept]
            self._kept_max[epoch] = list(itertools.accumulate((t for _, t in kept), max))
        self._unacked.sort()
        self._maybe.sort()
        self._writes = sorted([*self._unacked, *(t for sent in self._sent.values()
                                                   for _, t in sent)])

    def events_at(self, d: Offset) -> set[Ident]:
        """Every event Redis gave id ``d``: the one it stands for now and the lost ones
        (empty: unknown)."""
        now = self.ident.get(d)
        if now is None:
            return set()
        return {now, *(w.ident for w in self.lost.get(d, ()))}

    def kinds_at(self, d: Offset) -> set[Kind]:
        """The (event, job) of every event Redis gave id ``d`` (empty: unknown)."""
        now = self.kind.get(d)
        return {now, *self.lost_kinds.get(d, ())} if now is not None else set()

    def newer_progress(self, epoch: str, job: str, offset: int, by: float) -> int | None:
        """The first ``progress`` of ``job`` after ``offset`` in ``epoch`` that was
        published (sent, or else received) by ``by``; None: none known. A progress whose
        publish was never answered, but that a tab received, was sent when it was."""
        offsets = self._progress.get((epoch, job), [])
        for o in offsets[bisect.bisect_right(offsets, offset):]:
            d = (epoch, o)
            sent = min((a.sent for a in self.acks.get(d, ()) if a.event == "progress"
                        and a.job == job), default=float("inf"))
            if min(self.seen_at.get(d, sent), sent) <= by:
                return o
        return None

    def latest_jobs(self, epoch: str, upto: int, above: int = 0) -> dict[str, int]:
        """Each job's latest known event in ``epoch`` at or below ``upto``, for the jobs
        whose latest one is above ``above``."""
        events, offsets = self._job_events.get(epoch, []), self._job_offsets.get(epoch, [])
        out: dict[str, int] = {}
        for i in range(bisect.bisect_right(offsets, upto) - 1, -1, -1):
            offset, job = events[i]
            if offset <= above:
                break
            out.setdefault(job, offset)
        return out

    def idle_since(self, t: float) -> float:
        """When the last durable publish sent before ``t`` was sent (-inf: none): the
        history's keys expire ``redis.history_ttl`` seconds after it."""
        i = bisect.bisect_left(self._writes, t)
        return self._writes[i - 1] if i else float("-inf")

    def ran_after(self, d: Offset) -> float:
        """When id ``d`` ran at the earliest: the latest send of an acknowledged event
        Redis holds at or before it (offsets grow as publishes run; -inf: none known)."""
        offsets = self._kept_offsets.get(d[0], [])
        i = bisect.bisect_right(offsets, d[1])
        return self._kept_max[d[0]][i - 1] if i else float("-inf")

    def upper_head(self, d: Offset, t: float, slack: float) -> int:
        """At most how far the offsets of ``d``'s epoch had reached at ``t`` (generous):
        the newest published or received by ``t``, plus every publish left without an
        answer that may have run after ``d`` (not refused; sent from ``slack`` seconds,
        the longest a publish may wait before Redis runs it, before ``d`` ran)."""
        times = self._seen_t.get(d[0], [])
        i = bisect.bisect_right(times, t)
        known = self._seen_max[d[0]][i - 1] if i else 0
        since = self.ran_after(d) - slack
        return known + max(0, bisect.bisect_right(self._maybe, t)
                           - bisect.bisect_right(self._maybe, since))

    def sent_after(self, epoch: str, t: float, below: int, above: int = 0) -> list[int]:
        """Offsets in (above, below) of the epoch acknowledged to publishers that sent
        them after ``t``, ascending, each once (an id acknowledged twice is one offset)."""
        offsets = self._offsets.get(epoch, [])
        times, running = self._times.get(epoch, []), self._time_max.get(epoch, [])
        out: list[int] = []
        i = bisect.bisect_left(offsets, below) - 1
        while i >= 0 and offsets[i] > above and running[i] > t:  # earlier ones: all sent <= t
            if times[i] > t and (not out or out[-1] != offsets[i]):
                out.append(offsets[i])
            i -= 1
        return out[::-1]


def learn(published: Iterable[Published], clients: Iterable[ClientLog],
          history: dict[str, dict[Offset, Held]],
          seen: dict[str, dict[Offset, set[Kind]]] | None = None) -> dict[str, Knowledge]:
    """Every source of what each durable offset was: acks, receipts, Redis' final history,
    then what Redis' history held while the run went on (``seen``): the one source of an
    event whose publish was never acknowledged, that no tab received (a replay coalesced
    it) and that the final history no longer holds. An offset ``seen`` as two kinds (a
    failover gave its id again) stays unknown."""
    out: dict[str, Knowledge] = defaultdict(Knowledge)
    unacked: dict[str, dict[Ident, Published]] = defaultdict(dict)
    for p in published:
        k = out[p.merchant]
        d = durable_id(p.id)
        if d is not None:
            k.acks[d].append(Ack((p.publisher, p.seq), p.event, p.job, p.sent,
                                 p.acked or p.sent))
            k._sent[d[0]].append((d[1], p.sent))
            k.seen_at[d] = min(k.seen_at.get(d, p.sent), p.sent)
        elif p.durable:
            k._unacked.append(p.sent)
            if not p.refused:
                k._maybe.append(p.sent)
                unacked[p.merchant][(p.publisher, p.seq)] = p
    _received(out, unacked, clients, history)
    for merchant in {*out, *history}:
        _settle(merchant, out[merchant], history.get(merchant, {}))
    for c in clients:
        k = out[c.merchant]
        for s in c.sessions:
            for f in s.frames:
                d = durable_id(f.id)
                if d is not None and f.event in MERCHANT_EVENTS:
                    if d not in k.kind:
                        k.kind[d] = (f.event, job_of(f.payload()))
                    k.seen_at[d] = min(k.seen_at.get(d, f.t), f.t)
    for merchant, entries in history.items():
        k = out[merchant]
        for d, held in entries.items():
            k.kind.setdefault(d, (held.event, held.job))
            if held.ident is not None:
                k.ident.setdefault(d, held.ident)
    for merchant, kinds in (seen or {}).items():
        k = out[merchant]
        for d, found in kinds.items():
            if d not in k.kind and len(found) == 1:
                k.kind[d] = next(iter(found))
            elif d in k.kind and found != {k.kind[d]}:
                k.uncertain.add(d)
    for k in out.values():
        k.index()
    return out


def _received(out: dict[str, Knowledge], unacked: dict[str, dict[Ident, Published]],
              clients: Iterable[ClientLog], history: dict[str, dict[Offset, Held]]) -> None:
    """An unacknowledged publish a tab received under a durable id ran there: it counts
    as an acknowledgement of the id at its first receipt, so an id Redis gave such an
    event after losing an acknowledged one is a lost write too. Not when Redis' final
    history holds the event under another id, nor when tabs received it under two ids
    (none the history holds it under): an event runs once, so a receipt under another
    id is a wrong one, for the checker to find, not a fact to learn."""
    first: dict[tuple[str, Offset, Ident], tuple[float, str, str | None]] = {}
    for c in clients:
        pending = unacked.get(c.merchant)
        if not pending:
            continue
        for s in c.sessions:
            for f in s.frames:
                d = durable_id(f.id)
                if d is None or f.event not in MERCHANT_EVENTS:
                    continue
                data = f.payload()
                got = ident_of(data)
                if got is not None and got in pending and f.t < first.get(
                        (c.merchant, d, got), (float("inf"),))[0]:
                    first[(c.merchant, d, got)] = (f.t, f.event, job_of(data))
    placed = {(m, held.ident): d for m, entries in history.items()
              for d, held in entries.items() if held.ident is not None}
    under: dict[tuple[str, Ident], set[Offset]] = defaultdict(set)
    for merchant, d, got in first:
        under[(merchant, got)].add(d)
    for (merchant, d, got), (t, event, job) in first.items():
        at = placed.get((merchant, got))
        if at != d and (at is not None or len(under[(merchant, got)]) > 1):
            continue
        p = unacked[merchant][got]
        out[merchant].acks[d].append(Ack(got, event, job, p.sent, t, received=True))


def _settle(merchant: str, k: Knowledge, entries: dict[Offset, Held]) -> None:
    """Which acknowledged event each id stands for now, and the lost writes. The event
    is the one Redis' final history holds there when it reaches back past the id
    (trimmed ids are not contradictions; one past the head is: the head went back),
    else the last one *sent* of those given the id; every other event given the id was
    lost.

    Not the last acknowledged, nor received: a primary frozen until its replica took
    over runs the commands written to it before it learns it was deposed, when it
    thaws, so its answer (and a tab's receipt, through its pub/sub) for the event it
    then loses may come after the promoted replica gave the id to the next event. That
    one was sent once its client had turned to the new primary, after the lost one was
    written to the old."""
    epoch = next(iter(entries))[0] if entries else None
    first = min((o for e, o in entries if e == epoch), default=0)
    for d, acks in k.acks.items():
        acks.sort(key=lambda a: (a.sent, a.acked))
        first_ack: dict[Ident, Ack] = {}
        for a in acks:
            first_ack.setdefault(a.ident, a)
        now: Ident | None = acks[-1].ident
        held = entries.get(d)
        if d[0] == epoch and d[1] >= first and (held is None or held.ident is not None):
            now = held.ident if held else None
        keep = first_ack.get(now) if now is not None else None
        if now is None:  # Redis holds no event there (one never acknowledged still counts)
            k.vanished.add(d)
        elif keep is not None and not keep.received:
            k._kept[d[0]].append((d[1], keep.sent))
        source = keep or held or acks[-1]
        k.kind[d] = (source.event, source.job)
        k.ident[d] = now or acks[-1].ident
        gone = [a for a in first_ack.values() if a.ident != now]
        if gone:
            k.lost[d] = [LostWrite(merchant, d, a.ident, a.acked, now, len(first_ack) > 1,
                                   a.received) for a in gone]
            k.lost_kinds[d] = {(a.event, a.job) for a in gone}
