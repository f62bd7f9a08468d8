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
