"""The committed record of chaos runs, and README's text derived from it.

``python -m tools.chaos.record REPORT...`` adds each run's report (written by
``python -m tools.chaos``) to ``docs/chaos/runs.jsonl`` as one row: its figures,
without frame logs, stamped with the commit the run ran at and, when its
``gateway/`` differed from that commit (a build broken on purpose, to show the
checker catches it), the diff; when its checker (``tools/chaos/``) differed, that
diff too (such a run is listed apart, never as a clean run). The run writes
these into its report; a report from before that is stamped from the checkout
that holds it, as it is when recorded. Every run keeps its row (a rerun of the
same command at the same commit too: a failing run is not replaced by a passing
one); adding the same report again replaces its own row. ``--readme`` rewrites
README.md's block between ``<!-- CHAOS -->`` and ``<!-- /CHAOS -->`` from that
file alone, so every figure there is one a run wrote.

Rows written before lost writes were told apart by every acknowledgement of an id
have ``lost_writes_explained`` (an undercount) instead of ``lost_writes``: the
table shows "n/a" for them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["RECORD", "markdown", "provenance", "row"]

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "docs" / "chaos" / "runs.jsonl"
README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- CHAOS -->\n).*?(<!-- /CHAOS -->)", re.S)


def _git(repo: Path, *args: str) -> str:
    run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return run.stdout.strip()


def provenance(repo: Path) -> dict[str, str]:
    """The commit a checkout is at, and how its gateway and its checker differ from it
    (a diff, then the untracked files)."""
    def changed(path: str) -> str:
        untracked = _git(repo, "ls-files", "--others", "--exclude-standard", "--", path)
        return "\n".join(filter(None, [_git(repo, "diff", "HEAD", "--", path),
                                        *(f"untracked: {f}" for f in untracked.splitlines())]))

    return {"commit": _git(repo, "rev-parse", "--short", "HEAD"),
            "gateway_diff": changed("gateway"), "checker_diff": changed("tools/chaos")}


def row(report_path: Path) -> dict[str, Any]:
    """One report's record row (the report lies in a checkout: `<repo>/.run/chaos/...`)."""
    report = json.loads(report_path.read_text())
    stamp = report.get("provenance") or provenance(
        Path(_git(report_path.resolve().parent, "rev-parse", "--show-toplevel")))
    clients = re.search(r"(\d+) clients", report["summary"])
    resyncs = {k: v for k, v in report["frames"].items() if k.startswith("resync")}
    return {
        "summary": report["summary"],
        "command": report["replay"],
        "profile": report["profile"],
        "seed": report["seed"],
        "duration_s": report["duration_s"],
        "wall_s": report["wall_s"],
        "t0_utc": report["t0_utc"],
        "commit": stamp["commit"],
        "gateway_diff": stamp["gateway_diff"],
        "checker_diff": stamp["checker_diff"],
        "clients": int(clients.group(1)) if clients else None,
        "events": report["events"],
        "faults": dict(Counter(f["kind"] for f in report["faults"])),
        "storms": len(report["storms"]),
        "storm_jumps": sum(s.get("jumped", 0) for s in report["storms"]),
        "sessions": sum(report["sessions"].values()),
        "resyncs": resyncs,
        **_lost(report),
        "converged": report["converged"],
        "anomaly_kinds": report["anomaly_kinds"],
        "anomalies": sum(report["anomaly_kinds"].values()),
    }


def _lost(report: dict[str, Any]) -> dict[str, Any]:
    """Lost writes, counted by the fault each fell in ("none": an anomaly)."""
    if "lost_writes" not in report:  # a report from before they were counted
        return {"lost_writes_explained": len(report["lost_writes_explained"])}
    lost = report["lost_writes"]
    return {"lost_writes": len(lost),
            "lost_writes_by_fault": dict(Counter((x["fault"] or {"kind": "none"})["kind"]
                                                 for x in lost))}


def read(path: Path = RECORD) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add(rows: list[dict[str, Any]], path: Path = RECORD) -> None:
    new = {_key(r) for r in rows}
    kept = [r for r in read(path) if _key(r) not in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [*kept, *rows]))


def _key(row: dict[str, Any]) -> tuple[str, str]:
    """One run: its command and the moment it started (a rerun is another run)."""
    return row["command"], row["t0_utc"]


def _faults(r: dict[str, Any]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(r["faults"].items()))


def _changed_line(diff: str) -> str:
    """The broken build's change, as `old` → `new` code in `file`."""
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    old = " ".join(ln[1:].strip() for ln in lines if ln.startswith("-"))
    new = " ".join(ln[1:].strip() for ln in lines if ln.startswith("+"))
    files = ", ".join(f"`{ln[6:]}`" for ln in diff.splitlines() if ln.startswith("+++ b/"))
    return f"`{old}` → `{new}` in {files}"


def _lost_cell(r: dict[str, Any]) -> str:
    if "lost_writes" not in r:
        return "n/a"
    by = ", ".join(f"{n:,} {kind}" for kind, n in sorted(r["lost_writes_by_fault"].items()))
    return f"{r['lost_writes']:,}" + (f": {by}" if by else "")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def markdown(rows: list[dict[str, Any]]) -> str:
    clean = sorted((r for r in rows if not r["gateway_diff"] and not r.get("checker_diff")),
                   key=lambda r: (r["profile"], -r["duration_s"]))
    broken = [r for r in rows if r["gateway_diff"]]
    loosened = [r for r in rows if r.get("checker_diff") and not r["gateway_diff"]]
    out = ["| profile | duration | events published (durable acknowledged) | clients, "
           "sessions | faults | resync frames | lost writes | anomalies | commit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in clean:
        e = r["events"]
        resyncs = ", ".join(f"{n:,} {k.split(':')[1]}" for k, n in sorted(r["resyncs"].items()))
        out.append(f"| {r['profile']} | {_duration(r['duration_s'])} | {e['published']:,} "
                   f"({e['durable_acked']:,}) | {r['clients']}, {r['sessions']:,} | "
                   f"{sum(r['faults'].values())}: {_faults(r)} | {resyncs} | "
                   f"{_lost_cell(r)} | **{r['anomalies']}** | {r['commit']} |")
    commands = dict.fromkeys(r["command"] for r in clean)  # each once, in table order
    out += ["", "Commands: " + "; ".join(f"`{command}`" for command in commands)]
    if broken:
        out += ["", "The same short run against builds broken on purpose (the checker must "
                    "fail them):", ""]
        for r in broken:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["anomaly_kinds"].items()))
            out.append(f"- {_changed_line(r['gateway_diff'])} (on {r['commit']}): "
                       f"`{r['summary']}` ({kinds}; exit 1)")
    if loosened:
        out += ["", "Runs whose checker (`tools/chaos/`) differed from their commit (not "
                    "counted above):", ""]
        out += [f"- `{r['command']}` at {r['commit']}: `{r['summary']}`" for r in loosened]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.record", description=__doc__)
    parser.add_argument("reports", nargs="*", type=Path, help="report.json files to add")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's CHAOS block")
    args = parser.parse_args(argv)
    if args.reports:
        add([row(path) for path in args.reports])
    text = markdown(read())
    if not args.readme:
        print(text, end="")
        return 0
    readme = README.read_text()
    if not _BLOCK.search(readme):
        raise SystemExit("README.md has no <!-- CHAOS --> block")
    README.write_text(_BLOCK.sub(lambda m: m.group(1) + text + m.group(2), readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
