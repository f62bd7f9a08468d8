"""What every block shares: paths, the block syntax, the no-record line, a row's stamp,
and the runs of ``python -m bench`` in compare.jsonl averaged over their rounds."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import records

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = records.DOCS
SELF = "`python -m bench.readme`"
DEFAULT = "python -m bench"  # the compare run of `make bench`; legacy rows carry no command

Rows = list[dict[str, Any]]


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)} -->\n)(.*?)(<!-- /{re.escape(name)} -->)", re.S)


def put(doc: str, name: str, text: str, where: str = "README.md") -> str:
    """``doc`` with block ``name`` holding ``text`` (one trailing newline)."""
    pat = _block_re(name)
    if not pat.search(doc):
        raise SystemExit(f"{where} has no <!-- {name} --> block")
    return pat.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(3), doc)


def no_record(what: str, commands: tuple[str, ...] | list[str], record: str) -> str:
    """The line standing for a figure no record backs, naming the commands that write one."""
    cmds = " and ".join(f"`{c}`" for c in commands)
    verb = "writes one" if len(commands) == 1 else "write them"
    return (f"- **{what}**: no committed record yet. {cmds} {verb} to "
            f"[docs/bench/{record}](docs/bench/{record}); then {SELF}.")


def stamp_text(r: dict) -> str:
    """When, at which commit, on which machine (what the row says of itself)."""
    parts = [r.get("ts", "?")[:10]]
    parts.append(f"at {r['commit']}" if r.get("commit") else "commit not recorded")
    m = r.get("machine")
    if m:
        parts.append(f"{m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, "
                     f"Python {m['python']}")
    else:
        parts.append("machine not recorded")
    return "; ".join(parts)


def runs(rows: Rows) -> dict[str, Rows]:
    """The record's rows by command line (rows from before stamping: ``python -m bench``)."""
    out: dict[str, Rows] = defaultdict(list)
    for r in rows:
        if "error" not in r:
            out[r.get("command", DEFAULT)].append(r)
    for cmd, group in out.items():  # a stamped run supersedes the unstamped rows
        stamped = [r for r in group if "bench" in r]
        if stamped:
            out[cmd] = stamped
    return out


def averaged(rows: Rows) -> dict[tuple[str, float], dict[str, Any]]:
    """(system, rate) -> the row, numeric fields averaged over rounds."""
    by: dict[tuple[str, float], Rows] = defaultdict(list)
    for r in rows:
        by[(r["system"], r["rate"])].append(r)
    out = {}
    for key, group in by.items():
        row = dict(group[0])
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                row[k] = sum(g[k] for g in group) / len(group)
        out[key] = row
    return out


def ms(v: float) -> str:
    """Milliseconds: thousands grouped, one decimal below 1,000."""
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"
