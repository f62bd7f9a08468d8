"""What is known of each merchant's durable events, from every source: acks,
receipts, and Redis' final history. Pure code, no I/O; indexed so that a
30-minute run (hundreds of thousands of events) checks in seconds.

Events are named as in :mod:`tools.chaos.events` (re-exported here).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict

from .events import Ack, Held, Ident, Kind, LostWrite, ident_of, job_of

__all__ = ["Ack", "Held", "Ident", "Kind", "Knowledge", "LostWrite", "ident_of", "job_of"]

Offset = tuple[str, int]


class Knowledge:
    """One merchant: type, job, identity, send and first-seen time of each offset."""

    def __init__(self) -> None:
        self.kind: dict[Offset, tuple[str, str | None]] = {}
        self.ident: dict[Offset, Ident] = {}  # the event an id stands for now
        self.acks: dict[Offset, list[Ack]] = defaultdict(list)  # every ack of each id
        self.lost: dict[Offset, list[LostWrite]] = {}
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
        return {now, *(w.kind for w in self.lost.get(d, ()))} if now is not None else set()

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
