"""What the checker read in a run, saved beside its report so that the checker (a newer
one, say) can be run on it again offline (:mod:`tools.chaos.recheck`).

One gzipped JSON file: every client's sessions and frames, every publish, the
faults, each merchant's final head, final history and history tap, the settings,
and the tabs that did not converge. Times stay as the run's ``time.monotonic()``
(``t0`` is the start of the load); each frame's data is stored once per distinct
text (tabs of a merchant read the same events).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .excuses import Settings
from .knowledge import Held, Kind
from .records import ClientLog, Fault, Frame, Published, Session

__all__ = ["VERSION", "Inputs", "load", "save"]

VERSION = 1
Offset = tuple[str, int]


@dataclass(slots=True)
class Inputs:
    """Everything :func:`tools.chaos.checker.check` (and ``not_converged``) read."""

    clients: list[ClientLog]
    published: list[Published]
    faults: list[Fault]
    heads: dict[str, Offset | None]
    settings: Settings
    history: dict[str, dict[Offset, Held]]
    seen: dict[str, dict[Offset, set[Kind]]]
    t0: float
    laggards: list[str] = field(default_factory=list)
    quiet_at: float = 0.0


def save(inputs: Inputs, path: Path) -> None:
    strings: dict[str, int] = {}

    def text(data: str) -> int:
        return strings.setdefault(data, len(strings))

    clients = [[c.name, c.merchant, [
        [s.started, s.last_event_id, s.via, s.entry, s.status, s.ended, s.end, s.jumped,
         [[f.t, f.event, f.id, text(f.data)] for f in s.frames]] for s in c.sessions]]
        for c in inputs.clients]
    doc = {
        "version": VERSION, "t0": inputs.t0, "settings": dataclasses.asdict(inputs.settings),
        "heads": {m: None if h is None else list(h) for m, h in inputs.heads.items()},
        "faults": [dataclasses.astuple(f) for f in inputs.faults],
        "published": [dataclasses.astuple(p) for p in inputs.published],
        "history": {m: [[d[0], d[1], h.event, h.job, h.ident and list(h.ident)]
                        for d, h in entries.items()] for m, entries in inputs.history.items()},
        "seen": {m: [[d[0], d[1], sorted([list(k) for k in kinds], key=str)]
                     for d, kinds in entries.items()] for m, entries in inputs.seen.items()},
        "laggards": inputs.laggards, "quiet_at": inputs.quiet_at,
        "clients": clients, "strings": list(strings),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as out:
        json.dump(doc, out, separators=(",", ":"))


def load(path: Path) -> Inputs:
    with gzip.open(path, "rt", encoding="utf-8") as src:
        doc: dict[str, Any] = json.load(src)
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: inputs version {doc.get('version')}, not {VERSION}")
    strings = doc["strings"]
    clients = [ClientLog(name, merchant, [
        Session(started, last, via, entry, status,
                [Frame(t, event, event_id, strings[i]) for t, event, event_id, i in frames],
                ended, end, jumped)
        for started, last, via, entry, status, ended, end, jumped, frames in sessions])
        for name, merchant, sessions in doc["clients"]]
    return Inputs(
        clients=clients,
        published=[Published(*p) for p in doc["published"]],
        faults=[Fault(*f) for f in doc["faults"]],
        heads={m: None if h is None else (h[0], h[1]) for m, h in doc["heads"].items()},
        settings=Settings(**doc["settings"]),
        history={m: {(e, o): Held(event, job, ident and (ident[0], ident[1]))
                     for e, o, event, job, ident in entries}
                 for m, entries in doc["history"].items()},
        seen={m: {(e, o): {(k[0], k[1]) for k in kinds} for e, o, kinds in entries}
              for m, entries in doc["seen"].items()},
        t0=doc["t0"], laggards=doc["laggards"], quiet_at=doc["quiet_at"])
