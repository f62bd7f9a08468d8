"""``python -m bench`` / ``make bench``: the gateway vs nginx+nchan vs the naive design.

Everything runs on 127.0.0.1 on free ports, is started here, and is stopped here by PID.
Each trial: start the system (and its own Redis), open N streams from the load
client (its own process), measure idle memory, publish R msg/s for D s, measure
delivery, latency and CPU, stop everything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procstat  # noqa: E402
from bench.systems import (  # noqa: E402
    Gateway,
    Naive,
    Nchan,
    System,
    make_tmp,
    parse_system,
)

DEFAULT_SYSTEMS = "gateway1,gateway2,nchan-memory,nchan-redis,naive"
STEP_RATES = "500,1000,2000,3000,5000,8000"
SCHEMA_SQL = """CREATE TABLE IF NOT EXISTS merchants (
  id          text PRIMARY KEY,
  shop_domain text NOT NULL UNIQUE,
  active      boolean NOT NULL DEFAULT true
);"""


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class LineReader:
    """Reads the client's stdout lines in a thread so waits can time out."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def next_json(self, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.lines:
                    line = self.lines.pop(0).strip()
                    if line.startswith("{"):
                        return json.loads(line)
                if self.eof:
                    return None
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def make_system(name: str, tmp: Path, pg, streams: int) -> System:
    kind, workers = parse_system(name)
    if kind == "gateway":
        return Gateway(name, workers, tmp, pg.dsn, streams)
    if kind == "naive":
        return Naive(name, workers, tmp)
    return Nchan(name, workers, tmp, use_redis=(kind == "nchan-redis"))


def run_trial(name: str, n: int, m: int, rate: float, dur: float, drain: float, tmp: Path, pg):
    row: dict = {
        "system": name,
        "streams": n,
        "merchants": m,
        "rate": rate,
        "duration": dur,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    sysobj = make_system(name, tmp, pg, n)
    client = None
    try:
        sysobj.start()
        row.update(notes=getattr(sysobj, "notes", []))
        time.sleep(0.5)
        pids = procstat.tree(sysobj.root_pid)
        mem0 = procstat.memory_kb(pids)
        cmd = [
            sys.executable,
            "-m",
            "bench.client",
            "--streams",
            str(n),
            "--merchants",
            str(m),
            "--rate",
            str(rate),
            "--duration",
            str(dur),
            "--drain",
            str(drain),
            *sysobj.client_args(),
        ]
        client = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        reader = LineReader(client.stdout)
        ready = reader.next_json(180)
        if not ready or ready.get("phase") != "ready":
            raise RuntimeError(f"client not ready: {ready}")
        row["open_s"] = ready["open_s"]
        row["open_status"] = ready.get("status", {})
        time.sleep(1.0)
        pids = procstat.tree(sysobj.root_pid)
        sysobj.pids = pids  # stop() SIGKILLs any of these left after SIGTERM
        mem1 = procstat.memory_kb(pids)
        row["server_procs"] = len(pids)
        row["server_mem_kb"] = mem1
        row["kb_per_stream"] = round((mem1 - mem0) / n, 2)
        rpid = sysobj.redis_pid()
        rcpu0 = procstat.cpu_seconds([rpid]) if rpid else 0.0
        cpu0 = procstat.cpu_seconds(pids)
        t0 = time.monotonic()
        client.stdin.write("go\n")
        client.stdin.flush()
        res = reader.next_json(dur * 4 + drain + 60)
        wall = time.monotonic() - t0
        cpu = procstat.cpu_seconds(pids) - cpu0
        rcpu = (procstat.cpu_seconds([rpid]) - rcpu0) if rpid else 0.0
        if not res or res.get("phase") != "result":
            raise RuntimeError(f"client gave no result: {res}")
        res.pop("phase")
        row.update(res)
        d = max(res["delivered"], 1)
        row["delivered_pct"] = round(100 * res["delivered"] / max(res["expected"], 1), 2)
        row["server_cpu_pct"] = round(100 * cpu / wall, 1)
        row["redis_cpu_pct"] = round(100 * rcpu / wall, 1)
        row["us_per_event"] = round((cpu + rcpu) * 1e6 / d, 2)
        row["us_per_event_server"] = round(cpu * 1e6 / d, 2)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        log = tmp / f"{name}.log"
        if log.exists():
            row["server_log_tail"] = log.read_text(errors="replace")[-1500:]
    finally:
        if client is not None:
            if client.poll() is None:
                try:
                    client.stdin.close()
                except OSError:
                    pass
                try:
                    client.wait(15)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait(5)
        sysobj.stop()
    return row


def ok(row: dict) -> bool:
    return (
        "error" not in row
        and row.get("delivered") == row.get("expected")
        and row.get("p99_ms", 1e9) < 200
        and row.get("closed_during", 1) == 0
    )


COLS = [
    ("system", "system", "{}"),
    ("R", "rate", "{:g}"),
    ("deliv/s", "delivered_per_s", "{:.0f}"),
    ("deliv%", "delivered_pct", "{:.2f}"),
    ("p50ms", "p50_ms", "{:.1f}"),
    ("p99ms", "p99_ms", "{:.1f}"),
    ("maxms", "max_ms", "{:.1f}"),
    ("srvCPU%", "server_cpu_pct", "{:.0f}"),
    ("redisCPU%", "redis_cpu_pct", "{:.0f}"),
    ("us/ev(s+r)", "us_per_event", "{:.1f}"),
    ("us/ev(srv)", "us_per_event_server", "{:.1f}"),
    ("KB/stream", "kb_per_stream", "{:.1f}"),
    ("cliCPU%", "client_cpu_pct", "{:.0f}"),
]


def table(rows: list[dict]) -> str:
    cells = [[h for h, _, _ in COLS]]
    for r in rows:
        if "error" in r:
            cells.append([r["system"], f"{r['rate']:g}", "ERROR: " + r["error"][:150]])
            continue
        line = []
        for _, key, fmt in COLS:
            v = r.get(key)
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    widths = [
        max(len(c[i]) for c in cells if i < len(c) and len(c) == len(COLS))
        for i in range(len(COLS))
    ]
    out = []
    for c in cells:
        if len(c) != len(COLS):
            out.append(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]}")
        else:
            out.append(
                "  ".join(
                    v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(c)
                )
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, help="N open streams [2000; step: 5000]")
    p.add_argument("--merchants", type=int, help="M merchants [200; step: 500]")
    p.add_argument("--rate", type=float, default=500, help="R msg/s published [500]")
    p.add_argument("--duration", type=float, default=10, help="D seconds of publishing [10]")
    p.add_argument("--drain", type=float, default=5, help="s to wait for stragglers [5]")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS)
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating order")
    p.add_argument("--step", action="store_true", help="raise R until each system fails")
    p.add_argument("--rates", default=STEP_RATES, help="rates for --step")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.jsonl"))
    args = p.parse_args(argv)
    n = args.streams or (5000 if args.step else 2000)
    m = args.merchants or (500 if args.step else 200)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        parse_system(s)
    hard = raise_nofile()
    if hard < n + 1000:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {n} streams", file=sys.stderr)

    tmp = make_tmp()
    pg = None
    rows: list[dict] = []
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    jf = json_path.open("w")

    def record(row: dict) -> None:
        rows.append(row)
        jf.write(json.dumps(row) + "\n")
        jf.flush()
        status = (
            "ERROR " + row["error"]
            if "error" in row
            else (
                f"{row.get('delivered_pct')}% p99={row.get('p99_ms')}ms "
                f"srv={row.get('server_cpu_pct')}% cli={row.get('client_cpu_pct')}%"
            )
        )
        print(f"  {row['system']:<14} R={row['rate']:g}: {status}", file=sys.stderr, flush=True)

    try:
        if any(parse_system(s)[0] == "gateway" for s in systems):
            from tools.services import PostgresServer

            pg = PostgresServer()
            pg.start()
            schema = ROOT / "config" / "schema.sql"
            if schema.exists():
                pg.apply_schema(str(schema))
            else:
                pg.execute(SCHEMA_SQL)
            pg.execute(
                "INSERT INTO merchants (id, shop_domain) SELECT 'm' || g, 'm' || g || "
                "'.myshopify.com' FROM generate_series(0, %s) AS g ON CONFLICT DO NOTHING",
                (m - 1,),
            )
        print(
            f"bench: N={n} M={m} D={args.duration:g}s systems={','.join(systems)} "
            f"({os.cpu_count()} cpus)",
            file=sys.stderr,
            flush=True,
        )
        if not args.step:
            for rnd in range(args.rounds):
                order = systems if rnd % 2 == 0 else systems[::-1]
                for s in order:
                    record(run_trial(s, n, m, args.rate, args.duration, args.drain, tmp, pg))
        else:
            rates = [float(r) for r in args.rates.split(",")]
            best: dict[str, float | None] = {s: None for s in systems}
            alive = list(systems)
            for i, rate in enumerate(rates):
                order = alive if i % 2 == 0 else alive[::-1]
                for s in list(order):
                    row = run_trial(s, n, m, rate, args.duration, args.drain, tmp, pg)
                    record(row)
                    if ok(row):
                        best[s] = rate
                    else:
                        alive.remove(s)
                if not alive:
                    break
    finally:
        if pg is not None:
            pg.stop()
        jf.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nN={n} streams over M={m} merchants, D={args.duration:g}s, "
        f"{os.cpu_count()} cpus; us/ev = server CPU microseconds per delivered event"
    )
    print(table(rows))
    if args.step:
        print("\nhighest R with 100% delivered and p99 < 200 ms:")
        for s in systems:
            print(f"  {s:<14} {best[s] if best[s] is not None else 'none'}")
    for r in rows:
        if "error" in r and r.get("server_log_tail"):
            print(f"\n--- {r['system']} server log tail ---\n{r['server_log_tail']}")
    print(f"\nJSON lines: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
