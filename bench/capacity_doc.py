"""docs/capacity.md's generated blocks, from the records.

``blocks()`` gives the text of the blocks (between ``<!-- NAME -->`` and
``<!-- /NAME -->``): the unit-costs table from docs/bench/unit-costs.json, the
worked examples (``python -m bench.capacity`` output), and the table of
prediction against measurement from ``--scale`` result files (JSON lines).
``python -m bench.readme`` writes them (with README's and the tolerance line);
``python -m bench.capacity_doc [LABEL=RESULTS.jsonl ...]`` does the same (by
default every docs/bench/scale-LABEL.jsonl).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

from bench import capacity
from bench.capacity import load_costs
from bench.report import costs_markdown
from bench.validate import compare

__all__ = ["blocks", "load_costs", "main"]

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


def _capacity(args: str, costs: Path) -> str:
    """What ``python -m bench.capacity ARGS`` prints (run here, not in a child)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        capacity.main([*args.split(), "--costs", str(costs)])
    return f"$ python -m bench.capacity {args}\n{out.getvalue()}"


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


def blocks(costs_path: Path, scale: list[tuple[str, Path]]) -> dict[str, str]:
    """Block name -> text, from the unit costs and the (label, path) scale records."""
    costs = load_costs(costs_path)
    out = {"COSTS": costs_markdown(json.loads(costs_path.read_text()))}
    for name, runs in EXAMPLES.items():
        out[name] = ("```\n" + "\n".join(_capacity(a, costs_path) for a in runs).rstrip()
                     + "\n```")
    rows = [row for label, path in scale for row in validation_rows(label, path, costs)]
    out["VALIDATION"] = HEAD + "\n" + "\n".join(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import readme

    args = sys.argv[1:] if argv is None else argv
    new = (blocks(COSTS, [_label_path(a) for a in args]) if args
           else readme.capacity_blocks())
    doc = DOC.read_text()
    for name, text in new.items():
        doc = readme.put(doc, name, text, "docs/capacity.md")
    DOC.write_text(doc)
    print(f"updated {DOC}")
    return 0


def _label_path(arg: str) -> tuple[str, Path]:
    label, _, path = arg.partition("=")
    return label, Path(path)


if __name__ == "__main__":
    sys.exit(main())
