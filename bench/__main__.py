"""``python -m bench`` / ``make bench``: the gateway vs nginx+nchan vs the naive design.

Everything runs on 127.0.0.1 on free ports, is started here, and is stopped here by PID.
Each trial: start the system (and its own Redis), open N streams from the load
client process(es) in stages (memory at each), publish at each rate R for D s,
measure delivery, latency and CPU, stop everything. ``--scale`` spreads 50,000
streams over several client processes against a 3-worker gateway and sets the
measurement beside the capacity model's prediction. Charts: docs/bench/*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import records
from bench.entry import run_main
from bench.report import ok, table
from bench.streams import raise_nofile
from bench.systems import durable_split, make_tmp, parse_system
from bench.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SYSTEMS = ("gateway1,gateway1-durable,gateway1-durable-http,gateway2,nchan-memory,"
                   "nchan-redis,naive")
DEFAULT_RATES = "500,1000,2000"
STEP_RATES = "500,1000,2000,3000,5000,8000"
SCALE_RATES = "1000,3000"
STREAMS_PER_CLIENT = 12_500  # well under the 20,000 open files one process may hold


def start_postgres(m: int):
    """A throwaway PostgreSQL holding merchants m0..m{M-1} (shop m{i}.myshopify.com)."""
    from tools.services import PostgresServer

    pg = PostgresServer()
    pg.start()
    pg.apply_schema()
    pg.execute(
        "INSERT INTO merchants (id, shop_domain) SELECT 'm' || g, 'm' || g || "
        "'.myshopify.com' FROM generate_series(0, %s) AS g ON CONFLICT DO NOTHING",
        (m - 1,),
    )
    return pg


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, help="N open streams [2000; step 5000; scale 50000]")
    p.add_argument("--merchants", type=int, help="M merchants [N/10]")
    p.add_argument("--rates", "--rate", dest="rates", help=f"R msg/s, comma list [{DEFAULT_RATES}]")
    p.add_argument("--duration", type=float, help="D seconds of publishing per rate [5; scale 60]")
    p.add_argument("--drain", type=float, default=5, help="s to wait for stragglers [5]")
    p.add_argument("--systems", help=f"[{DEFAULT_SYSTEMS}; scale gateway3]")
    p.add_argument("--procs", type=int, help="client processes [1; scale N/12500]")
    p.add_argument("--payload", type=int, default=0, help="extra bytes per message [0]")
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating order")
    p.add_argument("--step", action="store_true", help="raise R until each system fails")
    p.add_argument("--scale", action="store_true",
                   help="multi-process client, 50,000 streams, gateway3, model vs measurement")
    p.add_argument("--costs", default=str(ROOT / "docs" / "bench" / "unit-costs.json"),
                   help="unit costs the --scale prediction reads")
    p.add_argument("--json", help="JSON lines [bench/results/latest.jsonl or scale.jsonl]")
    p.add_argument("--record", help="bench record the rows replace their command's rows in "
                   "[docs/bench/compare.jsonl; scale: none, see --json] ('' = none)")
    p.add_argument("--gateway-src", help="gateway from this directory or git revision (HEAD)")
    p.add_argument("--charts", default=str(ROOT / "docs" / "bench"),
                   help="PNG directory ('' = none)")
    a = p.parse_args(argv)
    a.streams = a.streams or (50_000 if a.scale else 5000 if a.step else 2000)
    a.merchants = a.merchants or max(1, a.streams // 10)
    a.rates = [float(r) for r in (a.rates or (SCALE_RATES if a.scale else STEP_RATES if a.step
                                              else DEFAULT_RATES)).split(",")]
    # scale: 60 s windows, so each holds one postgres.recheck round (every 60 s)
    a.duration = a.duration or (60.0 if a.scale else 5.0)
    a.systems = [s.strip() for s in (a.systems or ("gateway3" if a.scale else DEFAULT_SYSTEMS))
                 .split(",") if s.strip()]
    a.procs = a.procs or (math.ceil(a.streams / STREAMS_PER_CLIENT) if a.scale else 1)
    a.json = Path(a.json or ROOT / "bench" / "results" / ("scale.jsonl" if a.scale
                                                         else "latest.jsonl"))
    if a.record is None:
        a.record = "" if a.scale else str(records.DOCS / "compare.jsonl")
    for s in a.systems:
        parse_system(s)
    return a


def print_durable_ratio(rows: list[dict]) -> None:
    """CPU per delivery of durable over plain publishing, per rate (same run): the
    server's, and the server's and Redis's together."""
    for durable in (r for r in rows if durable_split(r["system"]) and "error" not in r):
        plain_name, kind = durable_split(durable["system"]) or ("", "")
        plain = next((r for r in rows if r["system"] == plain_name
                      and r.get("rate") == durable["rate"] and "error" not in r), None)
        if plain and plain.get("us_per_event_server") and plain.get("us_per_event"):
            server = durable["us_per_event_server"] / plain["us_per_event_server"]
            total = durable["us_per_event"] / plain["us_per_event"]
            print(f"{kind}/plain CPU per delivery at R={durable['rate']:g}: server {server:.3f} "
                  f"({durable['us_per_event_server']} vs {plain['us_per_event_server']} us), "
                  f"server+Redis {total:.3f} ({durable['us_per_event']} vs "
                  f"{plain['us_per_event']} us)")


def main(argv: list[str] | None = None) -> int:
    return run_main("bench", parse_args, compare, argv)


def compare(argv: list[str], args: argparse.Namespace) -> int:
    """Every trial, the tables, the record (the open-file limit already raised)."""
    hard = raise_nofile()  # raised by run_main already: this reads the hard limit
    if hard < args.streams / args.procs + 1000:
        print(f"warning: RLIMIT_NOFILE {hard} is low for {args.streams} streams in {args.procs} "
              "client process(es); use --procs", file=sys.stderr)
    tmp = make_tmp()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.stamp = records.stamp("scale" if args.scale else "compare",
                               records.command("bench", argv), _params(args))
    try:
        rows, best = run_trials(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    checked = report(args, rows, best)
    if args.record:
        print("record:", records.write(args.stamp["bench"], rows, Path(args.record),
                                       args.stamp["command"], args.stamp["params"]))
    problems = failures(rows, checked)
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


def failures(rows: list[dict], checked: list[dict]) -> list[str]:
    """The bounds this run's report failed: a trial that ended in an error, and (``--scale``)
    a capacity model prediction outside ``bench.validate.TOLERANCE_PCT`` of the measurement."""
    from bench.validate import TOLERANCE_PCT, within

    out = [f"{r['system']} R={r.get('rate', 0):g}: {r['error']}" for r in rows if "error" in r]
    out += [f"capacity model vs {c['system']} at {c['rate']:g} msg/s: CPU {c['cpu_err_pct']} %, "
            f"memory {c['mem_err_pct']} % (tolerance {TOLERANCE_PCT})"
            for c in checked if not within(c)]
    return out


def _params(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("stamp",)}


def _record(jf: Any, row: dict) -> None:
    """One row to the JSON lines file (flushed) and a one-line summary to stderr."""
    jf.write(json.dumps(row) + "\n")
    jf.flush()
    status = ("ERROR " + row["error"] if "error" in row else
              f"{row.get('delivered_pct')}% p99={row.get('p99_ms')}ms "
              f"srv={row.get('server_cpu_pct')}% cli={row.get('client_cpu_pct')}%")
    print(f"  {row['system']:<14} N={row['streams']} R={row.get('rate', 0):g}: {status}",
          file=sys.stderr, flush=True)


def run_trials(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], dict[str, float | None]]:
    """Every system, every round (alternating order): the rows, and each system's best rate."""
    n, m = args.streams, args.merchants
    rows: list[dict] = []
    best: dict[str, float | None] = {s: None for s in args.systems}
    pg = None
    with args.json.open("w") as jf:
        try:
            if any(parse_system(s)[0] == "gateway" for s in args.systems):
                pg = start_postgres(m)
            print(f"bench: N={n} M={m} D={args.duration:g}s rates={args.rates} "
                  f"procs={args.procs} systems={','.join(args.systems)} "
                  f"({os.cpu_count()} cpus)", file=sys.stderr, flush=True)
            trial = 0
            for rnd in range(args.rounds):
                for s in args.systems if rnd % 2 == 0 else args.systems[::-1]:
                    trial += 1
                    for row in run_trial(s, n, m, args.rates, args.duration, args.drain, tmp, pg,
                                         procs=args.procs, payload=args.payload,
                                         trial_no=trial, stop_on_fail=args.step):
                        rows.append(row)
                        _record(jf, {**args.stamp, **row})
                        if ok(row):
                            best[s] = max(best[s] or 0, row["rate"])
        finally:
            if pg is not None:
                pg.stop()
    return rows, best


def report(args: argparse.Namespace, rows: list[dict],
           best: dict[str, float | None]) -> list[dict]:
    """The table, the step results, error log tails, validation and charts; the
    validation's rows (``--scale``: the capacity model against each gateway row)."""
    print(f"\nN={args.streams} streams over M={args.merchants} merchants, D={args.duration:g}s, "
          f"client processes={args.procs}, {os.cpu_count()} cpus; "
          "us/ev = CPU microseconds per delivered event")
    print(table(rows))
    print_durable_ratio(rows)
    if args.step:
        print("\nhighest R with 100% delivered and p99 < 200 ms:")
        for s in args.systems:
            print(f"  {s:<14} {best[s] if best[s] is not None else 'none'}")
    for r in rows:
        if "error" in r and r.get("server_log_tail"):
            print(f"\n--- {r['system']} server log tail ---\n{r['server_log_tail']}")
    checked: list[dict] = []
    if args.scale:
        from bench.validate import print_validation

        checked = print_validation(rows, Path(args.costs))
    if args.charts:
        from bench.capacity import load_costs
        from bench.charts import write_charts

        costs = load_costs(args.costs) if args.scale and Path(args.costs).exists() else None
        for path in write_charts(rows, Path(args.charts), "scale-" if args.scale else "", costs):
            print(f"chart: {path}")
    print(f"\nJSON lines: {args.json}")
    return checked


if __name__ == "__main__":
    sys.exit(main())
