"""The events of a run as the checker names them: an identity, a kind, an entry of
Redis' history, an acknowledgement, a lost write. Pure code, no I/O.

An event's *identity* is its publisher and sequence number (``pub``, ``seq`` in
every payload the chaos publishers send): it tells a durable event delivered
as a plain one, and an acknowledged id that Redis later gave another event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Ack", "Held", "Ident", "Kind", "LostWrite", "Offset", "ident_of", "job_of"]

Offset = tuple[str, int]
Ident = tuple[str, int]  # (publisher, seq)
Kind = tuple[str, str | None]  # (event, job)


@dataclass(frozen=True, slots=True)
class Held:
    """One entry of Redis' final history."""

    event: str
    job: str | None
    ident: Ident | None


@dataclass(frozen=True, slots=True)
class Ack:
    """One durable publish acknowledged with an id (``received``: never acknowledged,
    but a tab received it under the id, ``acked`` the first receipt: Redis ran it)."""

    ident: Ident
    event: str
    job: str | None
    sent: float
    acked: float
    received: bool = False


@dataclass(frozen=True, slots=True)
class LostWrite:
    """An acknowledged durable id whose event Redis lost after acknowledging it: its
    final history holds another event there (or none though it reaches back past it),
    or the id was acknowledged again for another event (``reused``: a promoted
    replica that never got the write gave its id to the next one)."""

    merchant: str
    offset: Offset
    ident: Ident
    kind: Kind  # the lost event's (event, job)
    acked: float
    found: Ident | None  # the event that holds the id now (None: none)
    reused: bool = False
    received: bool = False  # never acknowledged: known from a receipt under the id


def job_of(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("jobId"), str | int):
        return str(data["jobId"])
    return None


def ident_of(data: Any) -> Ident | None:
    if isinstance(data, dict) and isinstance(data.get("pub"), str) and isinstance(
            data.get("seq"), int):
        return data["pub"], data["seq"]
    return None
