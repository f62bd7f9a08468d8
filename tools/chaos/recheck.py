"""``python -m tools.chaos.recheck REPORT [--frames]``: run the checker of this checkout
(its rules and policy; the run's configuration) again on what a saved run read (its
inputs, saved beside its report: :mod:`tools.chaos.inputs`) and print the anomalies,
one line each (``--frames``: with the tab's frames around each), times in seconds
since the load started. Exit 0: none; 1: some; 2: the report has no saved inputs
(runs before they were saved cannot be checked again: the report keeps only the
anomalies' frames), or none this reads (damaged, truncated, another version), said
in one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from .checker import Anomaly, check, not_converged
from .inputs import Inputs, load
from .losses import Loss

__all__ = ["inputs_path", "main", "recheck"]


def inputs_path(report: Path) -> Path:
    """Where a report's inputs are saved (the report names it; else the default)."""
    try:
        name = json.loads(report.read_text()).get("inputs")
    except (OSError, ValueError):
        name = None
    return report.with_name(name) if name else report.with_suffix(".inputs.json.gz")


def recheck(inputs: Inputs) -> tuple[list[Anomaly], list[Loss]]:
    """The anomalies and lost writes the checker finds in ``inputs``."""
    losses: list[Loss] = []
    anomalies = check(inputs.clients, inputs.published, inputs.faults, inputs.heads,
                      inputs.settings, inputs.history, losses, inputs.seen)
    return anomalies + not_converged(inputs.laggards, inputs.quiet_at), losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.recheck", description=__doc__)
    parser.add_argument("report", type=Path, help="a run's report.json")
    parser.add_argument("--frames", action="store_true", help="print each anomaly's frames")
    args = parser.parse_args(argv)
    path = inputs_path(args.report)
    if not path.exists():
        print(f"chaos recheck: {args.report} has no saved inputs ({path.name} is missing): "
              "only runs that saved them can be checked again", file=sys.stderr)
        return 2
    try:
        inputs = load(path)
    except Exception as exc:  # anything a damaged or foreign file raises: not a finding
        print(f"chaos recheck: {path}: unreadable saved inputs ({type(exc).__name__}: "
              f"{str(exc)[:200]})", file=sys.stderr)
        return 2
    anomalies, losses = recheck(inputs)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(a.kind for a in anomalies).items()))
    print(f"chaos recheck: {len(anomalies)} anomalies{f' ({kinds})' if kinds else ''}, "
          f"{len(losses)} lost writes ({sum(x.fault is None for x in losses)} unexplained)")
    t0 = inputs.t0
    for a in anomalies:
        where = f"{a.client} s{a.session} f{a.frame}" if a.client != "-" else "run"
        print(f"{a.t - t0:9.3f} {a.kind} {a.merchant} {where}: {a.message}")
        for f in a.frames if args.frames else ():
            print(f"            {f[0] - t0:9.3f} {f[1]} {f[2]} {f[3]}")
    return 1 if anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
