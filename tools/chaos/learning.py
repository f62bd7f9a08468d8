"""Building :class:`~tools.chaos.knowledge.Knowledge` from a run's records: acks,
receipts, Redis' final history and what its history held while the run went on.
Pure code, no I/O."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .events import Ack, Held, Ident, Kind, LostWrite, ident_of, job_of
from .knowledge import Knowledge, Offset
from .records import MERCHANT_EVENTS, ClientLog, Published, durable_id

__all__ = ["learn"]


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
            k.lost[d] = [LostWrite(merchant, d, a.ident, (a.event, a.job), a.acked, now,
                                   len(first_ack) > 1, a.received) for a in gone]
