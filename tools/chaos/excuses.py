"""What explains, for the checker, what would otherwise be an anomaly: a fault around
a ``resync``, a ``shutdown`` or a lost write, or the history's limits (trimmed,
expired, a plain id). Pure code, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .knowledge import Knowledge
from .losses import Loss, explain
from .records import Fault, Frame, Session, durable_id
from .schedule import BEHIND_NGINX

__all__ = ["Excuses", "Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    history: int = 100  # sse.history
    history_ttl: float = 600.0  # redis.history_ttl: an idle merchant's history expires
    snapshot_jobs: int = 100  # sse.snapshot_jobs: the jobs a snapshot shows at most
    redis_before_s: float = 1.0  # a Redis fault explains resyncs from this long before it
    redis_after_s: float = 10.0  # ... to this long after it ended (reconnect backoff, canary)
    # A lossy fault explains lost writes acknowledged from this long before it started.
    # Redis Cluster replicates asynchronously but as it goes: a write is lost when its
    # primary dies, or is frozen until its replica takes over, before the write reached
    # the replica. Every fault ends only once each replica is synced again
    # (RedisCluster.wait_healthy), and the replica link acknowledges every second, so
    # what was acknowledged seconds before the fault has reached the replica; 3 s covers
    # two acknowledgement periods and the moment between the fault's recorded start and
    # its signal. (Seed 2313's lost writes were all acknowledged inside their freeze, by
    # the frozen primary as it thawed, before it learnt it was deposed.)
    lost_before_s: float = 3.0
    # The longest a durable publish may wait between its send and Redis running it: the
    # publish API holds one back at most 2 s before it refuses it (docs/publishing.md,
    # Backpressure), and a command already written to a frozen Redis runs when it thaws
    # (freezes last 1-3 s; after its 5 s Redis timeout the API answers 503 and the
    # helper's socket times out after 3 s, but the command may still run). So a
    # publish left without an answer and sent more than this long before an id ran
    # cannot have run after it: it cannot have trimmed that id from the history.
    publish_slack_s: float = 10.0


class Excuses:
    """The run's faults and what is known of one merchant's events, asked about the
    merchant's lost writes and its clients' frames."""

    def __init__(self, faults: Sequence[Fault], settings: Settings, know: Knowledge) -> None:
        self.faults, self.settings, self.know = faults, settings, know
        self.losses: list[Loss] = [explain(x, faults, settings.lost_before_s)
                                   for d in sorted(know.lost) for x in know.lost[d]]
        # ids whose every acknowledged event a lossy fault lost: missing one is no gap
        self.lost = know.vanished - {x.write.offset for x in self.losses if x.fault is None}

    def resync(self, reason: Any, s: Session, f: Frame, got_at: dict[str, float]) -> bool:
        """Whether resync frame ``f`` (its ``reason``) is explained; ``got_at``: when the
        client received each durable event or snapshot id."""
        redis = self.near(f.t, lambda x: x.redis, self.settings.redis_before_s,
                          self.settings.redis_after_s)
        if reason == "redis_reconnected" and redis:
            return True
        return reason == "history_gap" and self.gap_explained(s, f, got_at)

    def gap_explained(self, s: Session, f: Frame, got_at: dict[str, float]) -> bool:
        if not s.last_event_id:
            return False
        d = durable_id(s.last_event_id)
        if d is None:
            return True  # a plain id: honoured only by the ring of the process that issued it
        st = self.settings
        if self.near(s.started, lambda x: x.redis, 4.0, st.redis_after_s):
            return True  # the history could not be read (the read waits up to 3 s)
        got = got_at.get(s.last_event_id, s.started)  # an event's or a snapshot's id
        if self.near_span(got - 1.0, f.t, lambda x: x.lossy):
            return True  # the history (its epoch) may be gone
        if s.started - self.know.idle_since(s.started) > st.history_ttl - 1.0:
            return True  # no durable publish for redis.history_ttl: the history expired
        return self.know.upper_head(d, f.t, st.publish_slack_s) - d[1] > st.history  # trimmed

    def terminated(self, s: Session, f: Frame) -> bool:
        """A SIGTERM hit the session's gateway while it was open (a paused tab reads
        the ``shutdown`` frame late, so its receipt time alone does not tell)."""
        return any(x.sigterm and (x.target == s.entry
                                  or (s.entry == "nginx" and x.target in BEHIND_NGINX))
                   and s.started - 0.5 <= x.start <= f.t + 0.5 for x in self.faults)

    def near(self, t: float, what: Any, before: float, after: float) -> bool:
        return any(what(x) and x.start - before <= t <= x.end + after for x in self.faults)

    def near_span(self, lo: float, hi: float, what: Any) -> bool:
        return any(what(x) and x.start <= hi and x.end >= lo for x in self.faults)
