"""What a stream may lag before it is cut, and the reasons a stream ends.

`QueuePolicy` comes from the `sse.*` config (`state.py`); `CloseReason` is what
the handler logs and counts (`gateway_stream_closes_total{reason}`) when the
stream's loop (`stream.Stream.run`) returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ABORTING", "HOLD_ALLOWANCE", "CloseReason", "QueuePolicy"]


class CloseReason(enum.StrEnum):
    """Why a stream ended; logged and counted (`gateway_stream_closes_total{reason}`)."""

    CLIENT_GONE = "client_gone"
    SLOW_CLIENT = "slow_client"
    SHUTDOWN = "shutdown"
    REVOKED = "revoked"
    DRAIN_TIMEOUT = "drain_timeout"  # still open when the shutdown budget ran out


ABORTING = (CloseReason.SLOW_CLIENT, CloseReason.CLIENT_GONE, CloseReason.DRAIN_TIMEOUT)
"""Reasons that drop what is queued and abort the socket (no final frame)."""


HOLD_ALLOWANCE = 4
"""While the gateway holds a stream for a snapshot after a resync (the state read and
the delivery round trip behind it), it may queue this many times `max_queue` and
`max_queue_bytes`, and after the hold drain from there: a reader that is not behind
is not cut for what the hold kept from it. Holds do not add up: a stream never queues
more than this many times the limits. The queued events are the hub's, shared by
every stream of the merchant."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How far a slow client may lag: `max_queue` events or `max_queue_bytes` bytes
    queued (a `coalesce` event of the same job, by `job_key`, replaces the older)."""

    max_queue: int
    coalesce: frozenset[str]
    job_key: str
    max_queue_bytes: int

    def too_far_behind(self, queued: int, queued_bytes: int, allowance: tuple[int, int],
                       held: bool) -> bool:
        """Whether a stream with `queued` events (`queued_bytes` bytes) is cut: past the
        limits plus a replay's `allowance` (events, bytes), or past HOLD_ALLOWANCE times
        them while `held`. One event larger than the byte budget may wait alone: a
        reader briefly behind on a big event is not cut; a second one behind it is."""
        most = self.max_queue + allowance[0]
        most_bytes = self.max_queue_bytes + allowance[1]
        if held:
            most = max(most, self.max_queue * HOLD_ALLOWANCE)
            most_bytes = max(most_bytes, self.max_queue_bytes * HOLD_ALLOWANCE)
        return queued > most or (queued_bytes > most_bytes and queued > 1)

    def after_hold(self, granted: tuple[int, int], allowance: tuple[int, int]
                   ) -> tuple[int, int]:
        """The allowance a stream keeps when its hold ends: what it queued may drain, but
        holds never add up (at most HOLD_ALLOWANCE times the limits, however many come
        before the reader catches up), while a replay's `granted` allowance stays."""
        over = HOLD_ALLOWANCE - 1
        return (min(allowance[0], max(granted[0], self.max_queue * over)),
                min(allowance[1], max(granted[1], self.max_queue_bytes * over)))
