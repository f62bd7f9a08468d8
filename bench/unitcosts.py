"""``python -m bench.unitcosts``: the unit costs the capacity model is built on, in one run.

Three gateway trials (one worker, N streams, an idle window before the opens):

- A: M = N merchants (1 stream each), R_A msg/s in 5 ms batches (~10 per batch);
- B: M = N/F merchants (F streams each), R_B msg/s, about one message per batch;
- C: M = N merchants, R_C msg/s, about one message per batch.

CPU per wakeup (a burst read from Redis), per message and per delivery are
solved from the three (A vs C separates wakeups from messages, B weighs
deliveries), after subtracting the idle CPU of the process; open and memory
costs per stream and per merchant from A vs B. Redis-side costs come from
``bench/redis_costs.py`` (a single Redis; a local Redis Cluster through
``bench/redis_cluster_costs.py``). Writes ``.run/bench/unit-costs.json`` (``--out``);
``--publish-copy`` also writes ``docs/bench/unit-costs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from bench import records
from bench.__main__ import start_postgres
from bench.entry import run_main
from bench.redis_costs import measure_redis
from bench.report import cluster_costs
from bench.systems import make_tmp
from bench.trial import run_trial

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["derive", "main", "mean_row", "solve2"]


def solve2(a1: float, b1: float, c1: float, a2: float, b2: float, c2: float) -> tuple[float, float]:
    """x, y with a1*x + b1*y = c1 and a2*x + b2*y = c2."""
    det = a1 * b2 - a2 * b1
    if abs(det) < 1e-12:
        raise ValueError("singular system: the two trials do not separate the costs")
    return (c1 * b2 - c2 * b1) / det, (a1 * c2 - a2 * c1) / det


def _equation(row: dict, heartbeat_s: float = 15.0) -> tuple[list[float], float]:
    """[wakeups, messages, deliveries incl. pings] and busy CPU us of one trial window."""
    from bench.capacity import wakeups

    msgs = row.get("gw_messages") or row["published"]
    batches = row.get("batches") or row["published"]
    wake = wakeups(batches, row["published"] / max(batches, 1), 1.0, 1)
    pings = row["streams"] / heartbeat_s * row["window_s"]
    busy = row["server_cpu_s"] - row.get("idle0_cpu_pct", 0) / 100 * row["window_s"]
    return [wake, msgs, row["delivered"] + pings], busy * 1e6


def solve_cpu(rows: list[dict]) -> tuple[float, float, float]:
    """Per wakeup, per message and per delivery CPU (us) from three trial kinds."""
    import numpy as np

    eqs = [_equation(r) for r in rows]
    a = np.array([e[0] for e in eqs])
    b = np.array([e[1] for e in eqs])
    x = np.linalg.solve(a, b) if len(rows) == 3 else np.linalg.lstsq(a, b, rcond=None)[0]
    return float(x[0]), float(x[1]), float(x[2])


def mean_row(rows: list[dict]) -> dict:
    """Field-wise mean of numeric fields (the first row's value for the rest)."""
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            vals = [r[k] for r in rows if isinstance(r.get(k), int | float)]
            out[k] = sum(vals) / len(vals)
    return out


def frame_overhead() -> int:
    """Bytes an SSE frame (HTTP/1.1 chunked) adds to a payload, as the gateway encodes it."""
    from gateway.fanout.frames import event_frame, wire

    payload = b'{"jobId":"j1","t":1764500000000000000,"seq":1}'
    return len(wire(event_frame("1a2b3c4d5e6:123456", "progress", payload))[1]) - len(payload)


def derive(a: dict, b: dict, cc: dict, redis: dict) -> dict:
    """Unit costs from trial rows A, B, C and the Redis micro-benchmark."""
    n = a["streams"]
    ma, mb = a["merchants"], b["merchants"]
    c_wake, c_msg, c_del = solve_cpu([a, b, cc])
    o_stream, o_merch = solve2(n, ma, a["open_cpu_s"] * 1e6, n, mb, b["open_cpu_s"] * 1e6)
    dmem_a = a["server_mem_kb"] - a["server_mem0_kb"]
    dmem_b = b["server_mem_kb"] - b["server_mem0_kb"]
    kb_stream, kb_merch = solve2(n, ma, dmem_a, n, mb, dmem_b)
    pg = (a["open_pg_cpu_s"] - b["open_pg_cpu_s"]) * 1e6 / (ma - mb)
    r1, r3 = redis["publish_us_1sub"], redis["publish_us_3sub"]

    def c(value: float, unit: str, how: str) -> dict:
        return {"value": round(value, 3), "unit": unit, "how": how}

    out = {
        "cpu_per_delivery": c(c_del, "us", "gateway CPU per event (or ping) written to a "
                              "stream; solved with the next two from trials A, B, C"),
        "cpu_per_message": c(c_msg, "us", "gateway CPU per message received from Redis "
                             "(per process holding the merchant), besides its wakeup"),
        "cpu_per_wakeup": c(c_wake, "us", "gateway CPU per burst of messages read from Redis "
                            "(event loop wakeup, socket read); unbatched: one per message"),
        "cpu_per_stream_open": c(o_stream, "us", "gateway CPU per stream open, merchant "
                                 "cached, plain HTTP (TLS excluded); from the open phases"),
        "cpu_per_merchant_open": c(o_merch, "us", "extra gateway CPU for a merchant's first "
                                   "stream in a process (PostgreSQL lookup, SUBSCRIBE)"),
        "mem_per_stream": c(kb_stream, "KiB", "PSS growth per idle stream; solved with "
                            "mem_per_merchant from trials A and B"),
        "mem_per_merchant": c(kb_merch, "KiB", "PSS per merchant held by a process "
                              "(subscription, history ring)"),
        "mem_per_process": c(a["server_mem0_kb"] / 1024, "MiB", "PSS of one idle worker"),
        "redis_per_publish": c(redis["publish_us_1sub_unpipelined"], "us", "Redis CPU per "
                               "PUBLISH sent one per round trip (32 connections), 1 subscriber"),
        "redis_per_publish_pipelined": c(r1, "us", "Redis CPU per PUBLISH in pipelines of 500, "
                                         "1 subscriber"),
        "redis_per_subscriber": c(max(0.0, (r3 - r1) / 2), "us", "Redis CPU per PUBLISH per "
                                  "further subscribed connection (1 vs 3 subscribers)"),
        "pg_per_lookup": c(pg, "us", "PostgreSQL CPU per merchant lookup (open phases, A vs B)"),
        "frame_overhead": c(frame_overhead(), "bytes", "SSE id/event/data lines and HTTP/1.1 "
                            "chunk framing around a payload"),
    }
    if "durable_publish_us" in redis:
        out["redis_per_durable_publish"] = c(redis["durable_publish_us_unpipelined"], "us",
                                             "Redis CPU per publish.lua run (XADD, HINCRBY, "
                                             "EXPIRE, PUBLISH), one per round trip, 1 subscriber")
        out["redis_per_durable_publish_pipelined"] = c(redis["durable_publish_us"], "us",
                                                       "the same, publish_many pipelines of 500")
        out["redis_per_replayed_event"] = c(redis["replay_redis_us_per_event"], "us",
                                            "Redis CPU per history event read by read_all "
                                            "(the whole capped history, 100 per read)")
        out["gateway_per_replayed_event"] = c(redis["replay_reader_us_per_event"], "us",
                                              "reader (gateway) CPU per replayed event: "
                                              "read_all, parse, bridge to the id")
    if "single" in redis.get("cluster", {}):  # bench/redis_cluster_costs.py ran
        out.update(cluster_costs(redis["cluster"]))
    return out


def git_describe(spec: str | None) -> str:
    """The commit measured: ``spec`` resolved, or HEAD plus '(working tree)'."""
    import subprocess

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", spec or "HEAD"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return rev if spec else f"{rev} (working tree)"


def measure_multiworker(tmp: Path, pg, worker_kb: float, idle_s: float) -> tuple[float, float]:
    """An idle gateway2: supervisor PSS (KiB; minus two idle workers) and idle CPU per worker.

    Idle CPU is measured here, with ``server.workers > 1``, because that mode adds
    per-process work (multiprocess metrics files, the supervisor's poll loop).
    """
    from bench import procstat
    from bench.trial import make_system

    sysobj = make_system("gateway2", tmp, pg, 100)
    try:
        sysobj.start()
        time.sleep(1.5)
        pids = procstat.tree(sysobj.root_pid)
        sysobj.pids = pids
        c0, t0 = procstat.cpu_seconds(pids), time.monotonic()
        time.sleep(idle_s)
        idle = (procstat.cpu_seconds(pids) - c0) / (time.monotonic() - t0) / 2
        return max(0.0, procstat.memory_kb(pids) - 2 * worker_kb), idle
    finally:
        sysobj.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.unitcosts",
                                description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=4000, help="N streams per trial [4000]")
    p.add_argument("--fanout", type=int, default=50, help="F streams per merchant in B [50]")
    p.add_argument("--rate-a", type=float, default=2000, help="R_A msg/s [2000]")
    p.add_argument("--rate-b", type=float, default=100, help="R_B msg/s [100]")
    p.add_argument("--rate-c", type=float, default=150, help="R_C msg/s, unbatched [150]")
    p.add_argument("--duration", type=float, default=8, help="s of publishing [8]")
    p.add_argument("--idle", type=float, default=4, help="s of each idle window [4]")
    p.add_argument("--repeat", type=int, default=2, help="run A and B this many times [2]")
    p.add_argument("--out", default=str(ROOT / ".run" / "bench" / "unit-costs.json"))
    p.add_argument("--payload", type=int, default=0, help="extra bytes per message [0]")
    p.add_argument("--redis-scale", type=float, default=1.0,
                   help="multiply the Redis micro-benchmark's message counts [1]")
    p.add_argument("--no-redis-cluster", dest="redis_cluster", action="store_false",
                   help="skip the Redis Cluster costs (bench.redis_cluster_costs)")
    p.add_argument("--gateway-src", help="gateway from this directory or git revision (HEAD)")
    p.add_argument("--publish-copy", action="store_true",
                   help="also write docs/bench/unit-costs.json")
    return p.parse_args(argv)


def run_trials(a: argparse.Namespace, tmp: Path, pg) -> list[dict] | None:
    """Trials A, B, C, ``--repeat`` times in alternating order; None if one failed."""
    n, mb = a.streams, max(1, a.streams // a.fanout)
    rows: list[dict] = []
    plan = [(n, a.rate_a), (mb, a.rate_b), (n, a.rate_c)]
    plan = [x for i in range(a.repeat) for x in (plan if i % 2 == 0 else plan[::-1])]
    for m, rate in plan:
        trial = run_trial("gateway1", n, m, [rate], a.duration, 5, tmp, pg, idle_s=a.idle,
                          trial_no=len(rows) + 1, payload=a.payload)
        if "error" in trial[0]:
            print(json.dumps(trial[0], indent=1), file=sys.stderr)
            return None
        rows.append(trial[0])
        print(f"  trial M={m} R={rate:g}: {trial[0]['delivered_pct']}% "
              f"srv={trial[0]['server_cpu_pct']}%", file=sys.stderr, flush=True)
    return rows


def measure(a: argparse.Namespace) -> tuple[list[dict], dict, dict] | None:
    """The trial rows, the unit costs and the Redis figures; None if a trial failed."""
    tmp = make_tmp()
    pg = start_postgres(a.streams)
    try:
        rows = run_trials(a, tmp, pg)
        if rows is None:
            return None
        supervisor_kb, idle_proc = measure_multiworker(tmp, pg, rows[0]["server_mem0_kb"],
                                                       a.idle * 2)
        pg.stop()
        pg = None
        # imports gateway.durable from the source under test
        redis = measure_redis(count=max(1000, round(100_000 * a.redis_scale)),
                              cluster=a.redis_cluster, cluster_scale=a.redis_scale)
        costs = derive(mean_row([r for r in rows if r["rate"] == a.rate_a]),
                       mean_row([r for r in rows if r["rate"] == a.rate_b]),
                       mean_row([r for r in rows if r["rate"] == a.rate_c]), redis)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    costs["mem_supervisor"] = {"value": round(supervisor_kb / 1024, 3), "unit": "MiB",
                               "how": "PSS of an idle gateway2 minus two idle workers"}
    costs["cpu_idle_per_process"] = {"value": round(idle_proc, 4), "unit": "cores",
                                     "how": "idle gateway2 (no streams): CPU of the process "
                                     "tree / 2 (timers, canary, metrics files, supervisor)"}
    return rows, costs, redis


def main(argv: list[str] | None = None) -> int:
    return run_main("bench.unitcosts", parse_args, write_costs, argv)


def write_costs(argv: list[str], a: argparse.Namespace) -> int:
    """Measure the unit costs; write and print them."""
    measured = measure(a)
    if measured is None:
        return 1
    rows, costs, redis = measured
    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.unitcosts " + " ".join(argv),
        "gateway": git_describe(a.gateway_src),
        "commit": records.commit(),
        "machine": {**records.machine(), "cpus": os.cpu_count(),
                    "system": platform.platform()},
        "params": dict(vars(a)),
        "costs": costs,
        "trials": [{k: v for k, v in r.items() if k not in ("hist", "server_log_tail")}
                   for r in rows],
        "redis": redis,
    }
    for path in [Path(a.out)] + ([ROOT / "docs" / "bench" / "unit-costs.json"]
                                 if a.publish_copy else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    for name, cost in costs.items():
        print(f"{name:<28} {cost['value']:>10.3f} {cost['unit']:<6} {cost['how']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
