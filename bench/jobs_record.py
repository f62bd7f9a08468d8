"""The committed record of the job-state benches, and README's text derived from it.

``docs/bench/jobs.jsonl`` holds the rows of the last ``python -m bench.snapshot_storm``
and ``python -m bench.publish_http`` runs (field ``bench``), each stamped with
when, by which command and at which commit. A run replaces only the rows of
the same bench and command line.
``python -m bench.jobs_record --readme`` rewrites README.md's generated block
(between ``<!-- JOBS -->`` and ``<!-- /JOBS -->``) from that file alone, so every
figure there is one a run wrote; without ``--readme`` the text is printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench import records

__all__ = ["RECORD", "markdown", "ratios", "read", "write"]

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "bench" / "jobs.jsonl"
README = ROOT / "README.md"
KEYED = ", key+seq"  # the label suffix of publish_http's rows with key and seq


def read(path: Path = RECORD) -> list[dict]:
    return records.read(path)


def write(bench: str, rows: list[dict], path: Path, command: str,
          params: dict | None = None) -> Path:
    """Replace the rows ``bench`` wrote with the same ``command`` by ``rows``, stamped
    (``bench.records``: commit, date, machine, parameters); the path."""
    return records.write(bench, rows, path, command, params)


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per publish shape (arrays, single): key+seq over without, from the same run's
    rows (rounds averaged): events/s and gateway+Redis CPU per event."""
    out: dict[str, dict[str, float]] = {}
    for shape in ("arrays", "single"):
        base, keyed = (_mean([r for r in rows if r.get("system") == label and "error" not in r])
                       for label in (f"gateway1 POST /publish, {shape}",
                                     f"gateway1 POST /publish, {shape}{KEYED}"))
        if base and keyed:
            out[shape] = {"events_per_s": keyed["events_per_s"] / base["events_per_s"],
                          "cpu_per_event": keyed["us_per_event"] / base["us_per_event"],
                          "base_events_per_s": base["events_per_s"],
                          "keyed_events_per_s": keyed["events_per_s"],
                          "base_us": base["us_per_event"], "keyed_us": keyed["us_per_event"]}
    return out


def _mean(rows: list[dict]) -> dict[str, float] | None:
    if not rows:
        return None
    n = len(rows)
    return {"events_per_s": sum(r["events_per_s"] for r in rows) / n,
            "us_per_event": sum(r["server_us_per_event"] + r["redis_us_per_event"]
                                for r in rows) / n}


def _storm_text(r: dict) -> list[str]:
    return [
        f"- **Snapshot storm** (`{r['command']}`, {r['ts'][:10]}, at {r['commit']}): "
        f"{r['streams']:,} streams over {r['merchants']:,} merchants, each merchant with "
        f"{r['jobs']} jobs of state, all connecting at once without `Last-Event-ID` to a new "
        f"{r['workers']}-worker gateway (`postgres.query_timeout` {r['query_timeout']}): "
        f"{r['snapshots']:,} of {r['streams']:,} streams got "
        f"their snapshot ({r['missing']} missing, {r['wrong_jobs']} with a wrong job count). "
        f"Redis served {r['state_reads_redis']:,} state reads (`HGETALL`; "
        f"{r['state_reads_per_merchant']:.2f} per merchant; `MULTI`/`EXEC` "
        f"{r['multi_redis']:,}/{r['exec_redis']:,}). Connect to snapshot: p50 "
        f"{r['snapshot_p50_s']} s, p99 {r['snapshot_p99_s']} s, max {r['snapshot_max_s']} s "
        f"({r['refused']} attempts refused and retried). Gateway {r['gateway_cpu_s']} CPU-s "
        f"({r['gateway_us_per_stream']:,} µs per stream), Redis {r['redis_cpu_s']} CPU-s; "
        f"other work on the machine meanwhile: {r['other_cores']} cores.",
    ]


def _publish_text(rows: list[dict]) -> list[str]:
    first = rows[0]
    lines = [f"- **HTTP publish with `key` and `seq` on every event** (`{first['command']}`, "
             f"{first['ts'][:10]}, at {first['commit']}; {first.get('rounds', 1)} round(s), "
             "order reversed each round, averaged), against the same publish without them "
             "in the same run:", "",
             "  | publish | events/s | gateway µs/event | Redis µs/event | other cores |",
             "  |---|---|---|---|---|"]
    for r in rows:
        if "error" not in r:
            lines.append(f"  | {r['system']} | {r['events_per_s']:,} | "
                         f"{r['server_us_per_event']} | {r['redis_us_per_event']} | "
                         f"{r.get('other_cores', '-')} |")
    lines.append("")
    for shape, q in ratios(rows).items():
        lines.append(f"  {shape}: key+seq / without = {q['events_per_s']:.2f}x events/s "
                     f"({q['keyed_events_per_s']:,.0f} vs {q['base_events_per_s']:,.0f}), "
                     f"{q['cpu_per_event']:.2f}x gateway+Redis CPU per event "
                     f"({q['keyed_us']:.1f} vs {q['base_us']:.1f} µs): "
                     + ("within" if q["events_per_s"] >= 0.9 and q["cpu_per_event"] <= 1.1
                        else "not within") + " 10 % of the publish without them.")
    return lines


def markdown(rows: list[dict]) -> str:
    """README's generated text: every figure read from ``rows`` (the record)."""
    lines = ["Generated by `python -m bench.jobs_record --readme` from "
             "[docs/bench/jobs.jsonl](docs/bench/jobs.jsonl) (`make bench MODE=durable`):", ""]
    storms = [r for r in rows if r.get("bench") == "snapshot_storm" and "error" not in r]
    publish = [r for r in rows if r.get("bench") == "publish_http"]
    for r in storms:
        lines += _storm_text(r)
    if publish:
        lines += _publish_text(publish)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs_record", description=__doc__)
    p.add_argument("--readme", action="store_true", help="rewrite README.md's JOBS block")
    p.add_argument("--record", default=str(RECORD))
    a = p.parse_args(argv)
    text = markdown(read(Path(a.record)))
    if not a.readme:
        print(text)
        return 0
    doc = README.read_text()
    pat = re.compile(r"(<!-- JOBS -->\n).*?(<!-- /JOBS -->)", re.S)
    if not pat.search(doc):
        raise SystemExit("README.md has no <!-- JOBS --> block")
    README.write_text(pat.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
