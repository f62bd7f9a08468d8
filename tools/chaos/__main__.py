"""``python -m tools.chaos --seed S --duration SECONDS --profile single|cluster
[--clients N] [--herd same|spread] [--report PATH]``: one line, a JSON report, exit 1
on any anomaly."""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
from pathlib import Path

from tools.gateway import REPO_ROOT

from .record import provenance
from .report import lost_lines, summary, write_report
from .runner import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--profile", choices=("single", "cluster"), default="single")
    parser.add_argument("--clients", type=int, default=100, help="browser tabs (50-200)")
    parser.add_argument("--herd", choices=("same", "spread"), default="same",
                        help="storm herds leave on one event (same) or each on its own")
    parser.add_argument("--burst-max", type=int, default=200,
                        help="events a storm publishes at most (10-1000)")
    parser.add_argument("--report", type=Path, default=None,
                        help="default: .run/chaos/<profile>-<seed>/report.json")
    args = parser.parse_args(argv)
    if args.duration < 10 or not 1 <= args.clients <= 2000 or not 10 <= args.burst_max <= 1000:
        parser.error("--duration must be >= 10, --clients between 1 and 2000, "
                     "--burst-max between 10 and 1000")
    seed = args.seed if args.seed is not None else random.randrange(1, 1 << 31)
    run_dir = REPO_ROOT / ".run" / "chaos" / f"{args.profile}-{seed}"
    try:  # the code this run runs: its commit, and how gateway/ and tools/chaos/ differ
        stamp = provenance(REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        stamp = None  # not a git checkout: `record` stamps it from where the report lies
    result = asyncio.run(run(seed, args.duration, args.profile, args.clients, run_dir,
                             args.herd, args.burst_max))
    report = args.report or run_dir / "report.json"
    write_report(result, report, stamp=stamp)
    print(summary(result))
    for line in lost_lines(result):
        print(line)
    print(f"chaos: report {report} (gateway logs beside it: {run_dir})")
    return 1 if result.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
