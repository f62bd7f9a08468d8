"""Which event each durable id brought a tab, for the checker. Pure code, no I/O.

An event's identity is its publisher and sequence number (``pub``, ``seq`` in
every payload the chaos publishers send; :mod:`tools.chaos.knowledge`). The
publishers send each identity once, at most once (no retries), so:

- ``wrong_event``: an id brought an event other than every one Redis gave it (the
  one it stands for now, or one a lossy fault lost: a lost write);
- ``two_ids``: one event came to the tab under two durable ids;
- ``plain_copy``: one event came to the tab under its durable id and as a plain
  event (either first): delivered twice. Not a lost write's event that came under
  its id, then, after a ``resync``, as a plain event: a process that holds a
  message whose id Redis' history no longer gives it delivers it as a plain event
  (docs/publishing.md, The envelope), and the ``resync`` told the tab its ids may
  have skipped or changed;
- ``reuse_missed``: the tab holds a lost write's event under an id Redis gave
  another event, and gets a later event Redis kept with no ``resync`` since (the
  checker clears :attr:`Identities.stale` on ``resync``).
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
        self.plain: set[Ident] = set()  # identities of the plain events received
        self.stale: dict[Offset, str] = {}  # ids held as a lost write's event, since a resync
        self.resyncs = 0  # resyncs so far
        self.lost_got: dict[Ident, int] = {}  # a lost write's event -> resyncs at its receipt

    def resynced(self) -> None:
        """The tab got a ``resync``."""
        self.stale.clear()
        self.resyncs += 1

    def plain_event(self, got: Ident | None) -> tuple[str, str] | None:
        """(kind, message) when a plain event ``got`` came under a durable id before."""
        if got is None:
            return None
        self.plain.add(got)
        # The promise is exactly once, in id order, or resync. A lost write's event went
        # out under its id before the loss showed; a process still holding it delivers
        # it as a plain event once Redis gives that id another (documented, for lost
        # writes), and a resync in between told the tab its ids may have changed. With
        # no resync between, plain first, or an event Redis kept: a copy.
        if got in self.durable and self.lost_got.get(got, self.resyncs) >= self.resyncs:
            return "plain_copy", f"{got} as a plain event, received before under " \
                f"{self.durable[got]}"
        return None

    def lost_event(self, d: Offset, got: Ident | None) -> bool:
        """Whether ``got`` under ``d`` is an event Redis lost there."""
        know = self.know
        return d in know.vanished or (d in know.lost and got is not None
                                      and got != know.ident.get(d))

    def kept(self, d: Offset, event_id: str, got: Ident | None) -> list[str]:
        """Note ``d`` bringing ``got``: a lost write's event under an id Redis gave another
        is held (:attr:`stale`); an event Redis kept returns the held ids before it, whose
        new events the tab skipped."""
        know = self.know
        if d in know.vanished:
            return []  # a lost write Redis gave no event: nothing newer follows it
        if got is not None and got != know.ident.get(d):
            if d in know.lost:
                self.stale[d] = event_id
            return []
        skipped = [o for o in self.stale if o[0] == d[0] and o[1] < d[1]]
        return [self.stale.pop(o) for o in skipped]

    def received(self, d: Offset, event_id: str, got: Ident | None) -> tuple[str, str] | None:
        """(kind, message) when durable id ``d`` (``event_id``) bringing ``got`` is wrong;
        None when it is right, or unknown (no identity in the payload, nothing known of
        the id)."""
        if got is None:
            return None
        first = self.durable.setdefault(got, event_id)
        if first != event_id:
            return "two_ids", f"{got} under {event_id}, received before under {first}"
        if got in self.plain:
            return "plain_copy", f"{got} under {event_id}, received before as a plain event"
        if self.lost_event(d, got):
            self.lost_got[got] = self.resyncs
        given = self.know.events_at(d)
        if given and got not in given:
            return "wrong_event", (f"{event_id} brought {got}; Redis gave that id to "
                                   f"{', '.join(map(str, sorted(given)))}")
        return None
