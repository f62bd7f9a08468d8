"""Which event each durable id brought a tab, for the checker. Pure code, no I/O.

An event's identity is its publisher and sequence number (``pub``, ``seq`` in
every payload the chaos publishers send; :mod:`tools.chaos.knowledge`). The
publishers send each identity once, at most once (no retries), so:

- ``wrong_event``: an id brought an event other than every one Redis gave it (the
  one it stands for now, or one a lossy fault lost: a lost write);
- ``two_ids``: one event came to the tab under two durable ids.
"""

from __future__ import annotations

from .knowledge import Ident, Knowledge

__all__ = ["Identities"]

Offset = tuple[str, int]


class Identities:
    """One tab's durable receipts by identity, checked against what each id stands for."""

    def __init__(self, know: Knowledge) -> None:
        self.know = know
        self.durable: dict[Ident, str] = {}  # identity -> the durable id it first came under

    def received(self, d: Offset, event_id: str, got: Ident | None) -> tuple[str, str] | None:
        """(kind, message) when durable id ``d`` (``event_id``) bringing ``got`` is wrong;
        None when it is right, or unknown (no identity in the payload, nothing known of
        the id)."""
        if got is None:
            return None
        first = self.durable.setdefault(got, event_id)
        if first != event_id:
            return "two_ids", f"{got} under {event_id}, received before under {first}"
        given = self.know.events_at(d)
        if given and got not in given:
            return "wrong_event", (f"{event_id} brought {got}; Redis gave that id to "
                                   f"{', '.join(map(str, sorted(given)))}")
        return None
