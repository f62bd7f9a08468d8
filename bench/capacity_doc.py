"""``python -m bench.capacity_doc LABEL=RESULTS.jsonl ...``: refresh docs/capacity.md.

Rewrites the generated blocks of docs/capacity.md (between ``<!-- NAME -->``
and ``<!-- /NAME -->``): the unit-costs table from docs/bench/unit-costs.json,
the worked examples (``python -m bench.capacity`` output), and the table of
prediction against measurement from ``--scale`` result files (JSON lines).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.capacity import load_costs
from bench.report import costs_markdown
from bench.validate import compare

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "capacity.md"
COSTS = ROOT / "docs" / "bench" / "unit-costs.json"
EXAMPLES = {
    "EX10K": ["--streams 10000 --tabs 2 --rate 2500"],
    "EX100K": ["--streams 100000 --tabs 2 --rate 25000"],
    "EX1M": ["--streams 1000000 --tabs 2 --rate 250000",
             "--streams 1000000 --tabs 2 --rate 250000 --durable --payload 2000"],
}
HEAD = ("| run | streams | merchants | workers | msg/s | CPU predicted (cores) | CPU measured "
        "| error | memory predicted (MiB) | memory measured | error | p99 | µs/delivery |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _capacity(args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.capacity", *args.split()], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return f"$ python -m bench.capacity {args}\n{out}"


def _block(name: str, text: str, doc: str) -> str:
    pat = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not pat.search(doc):
        raise SystemExit(f"docs/capacity.md has no <!-- {name} --> block")
    return pat.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), doc)


def validation_rows(label: str, path: Path, costs: dict[str, float]) -> list[str]:
    """One markdown row per successful gateway row of a result file."""
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "error" in r or not r["system"].startswith("gateway"):
            continue
        c = compare(r, costs)
        rows.append(
            f"| {label} | {r['streams']:,} | {r['merchants']:,} | {r['workers']} | {r['rate']:g} "
            f"| {c['cpu_pred']:.2f} | {c['cpu_meas']:.2f} | {c['cpu_err_pct']:+.0f} % "
            f"| {c['mem_pred']:,.0f} | {c['mem_meas']:,.0f} | {c['mem_err_pct']:+.0f} % "
            f"| {r['p99_ms']:.1f} ms | {r['us_per_event_server']:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    doc = DOC.read_text()
    costs = load_costs(COSTS)
    doc = _block("COSTS", costs_markdown(json.loads(COSTS.read_text())), doc)
    for name, runs in EXAMPLES.items():
        doc = _block(name, "```\n" + "\n".join(_capacity(a) for a in runs).rstrip() + "\n```", doc)
    if args:
        rows = [row for arg in args for row in validation_rows(*_label_path(arg), costs)]
        doc = _block("VALIDATION", HEAD + "\n" + "\n".join(rows), doc)
    DOC.write_text(doc)
    print(f"updated {DOC}")
    return 0


def _label_path(arg: str) -> tuple[str, Path]:
    label, _, path = arg.partition("=")
    return label, Path(path)


if __name__ == "__main__":
    sys.exit(main())
