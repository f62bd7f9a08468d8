"""What the checker read in a run, saved beside its report so that the checker (a newer
one, say) can be run on it again offline (:mod:`tools.chaos.recheck`).

One gzipped JSON file: every client's sessions and frames, every publish, the
faults, each merchant's final head, final history and history tap, the run's
configuration, and the tabs that did not converge. Times stay as the run's
``time.monotonic()`` (``t0`` is the start of the load); each frame's data is stored
once per distinct text (tabs of a merchant read the same events). Records are saved
by field name (version 1 saved them by position: still read), so that a field added
later with a default leaves older files readable.

Only the configuration the gateways ran with is saved of the checker's
:class:`Settings` (:data:`CONFIG`); the rest is the checker's policy (how near a
fault must be to explain what): a run checked again gets this checkout's, so a rule
tightened since applies to runs made before.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .excuses import Settings
from .knowledge import Held, Kind
from .records import ClientLog, Fault, Frame, Published, Session

__all__ = ["CONFIG", "VERSION", "Inputs", "load", "save"]

VERSION = 2
READS = (1, 2)  # the versions load() reads
CONFIG = ("history", "history_ttl", "snapshot_jobs")  # the Settings a run configured
Offset = tuple[str, int]
T = TypeVar("T")
_V1_SESSION = ("started", "last_event_id", "via", "entry", "status", "ended", "end", "jumped",
               "frames")  # a version 1 session's order


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

    def session(s: Session) -> dict[str, Any]:
        out = {k: getattr(s, k) for k in _names(Session) if k != "frames"}
        out["frames"] = [[f.t, f.event, f.id, text(f.data)] for f in s.frames]
        return out

    clients = [{"name": c.name, "merchant": c.merchant,
                "sessions": [session(s) for s in c.sessions]} for c in inputs.clients]
    doc = {
        "version": VERSION, "t0": inputs.t0,
        "settings": {k: getattr(inputs.settings, k) for k in CONFIG},
        "heads": {m: None if h is None else list(h) for m, h in inputs.heads.items()},
        "faults": [dataclasses.asdict(f) for f in inputs.faults],
        "published": [dataclasses.asdict(p) for p in inputs.published],
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
    """The inputs saved at ``path`` (OSError, ValueError, KeyError, TypeError, EOFError:
    unreadable, or not saved inputs of a version this reads)."""
    with gzip.open(path, "rt", encoding="utf-8") as src:
        doc: dict[str, Any] = json.load(src)
    if not isinstance(doc, dict) or doc.get("version") not in READS:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise ValueError(f"inputs version {version}, not one of {READS}")
    strings = doc["strings"]

    def session(row: Any) -> Session:
        if isinstance(row, list):  # version 1
            row = dict(zip(_V1_SESSION, row, strict=True))
        return _build(Session, {**row, "frames": [Frame(t, event, event_id, strings[i])
                                                  for t, event, event_id, i in row["frames"]]})

    clients = [ClientLog(c[0], c[1], [session(s) for s in c[2]]) if isinstance(c, list)
               else ClientLog(c["name"], c["merchant"], [session(s) for s in c["sessions"]])
               for c in doc["clients"]]
    settings = doc["settings"]
    return Inputs(
        clients=clients,
        published=[_build(Published, p) for p in doc["published"]],
        faults=[_build(Fault, f) for f in doc["faults"]],
        heads={m: None if h is None else (h[0], h[1]) for m, h in doc["heads"].items()},
        settings=Settings(**{k: settings[k] for k in CONFIG if k in settings}),
        history={m: {(e, o): Held(event, job, ident and (ident[0], ident[1]))
                     for e, o, event, job, ident in entries}
                 for m, entries in doc["history"].items()},
        seen={m: {(e, o): {(k[0], k[1]) for k in kinds} for e, o, kinds in entries}
              for m, entries in doc["seen"].items()},
        t0=doc["t0"], laggards=doc["laggards"], quiet_at=doc["quiet_at"])


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type[T], row: Any) -> T:
    """A record saved by field name (a dict), or by position (a list: version 1)."""
    if isinstance(row, list):
        return cls(*row)
    return cls(**{k: row[k] for k in _names(cls) if k in row})
