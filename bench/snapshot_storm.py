"""``python -m bench.snapshot_storm``: a connect storm where every stream gets a job-state snapshot.

1. One Redis, one PostgreSQL (merchants m0..m{M-1}); ``--jobs`` durable job
   events per merchant through publish.lua (job ``j{i}-{k}``: ``--jobs`` jobs of
   state per merchant), before any gateway runs.
2. A new one-process gateway starts (cold: no merchant cached). The snapshot
   client(s) (``bench/snapshot_client.py``, ``--procs`` processes of at most
   12,500 streams each, each on its own source address) open N streams over
   M merchants all at once, none with a ``Last-Event-ID``.
3. Measured: every stream got a ``snapshot`` frame holding ``--jobs`` jobs
   (missing ones counted); the state reads Redis served (``HGETALL`` calls in
   ``INFO commandstats``, with ``MULTI``/``EXEC``) against the number of
   merchants; p50/p99/max time from a stream's first connect attempt to its
   snapshot frame; gateway, Redis and client CPU; what else the machine ran.

Stops by itself (every wait is bounded); loopback only; processes stopped by PID.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

from bench import hist, jobs_record, procstat
from bench.__main__ import STREAMS_PER_CLIENT, raise_nofile, start_postgres
from bench.client_proc import ClientProc
from bench.pool import split
from bench.redis_costs import command_calls
from bench.storm import SharedRedisGateway, publish_round
from bench.systems import make_tmp
from bench.trial import gateway_samples
from tools.services import RedisServer, free_port

__all__ = ["main", "passed", "report", "run_snapshot_storm"]

READS = ("hgetall", "multi", "exec")


def start_clients(a: argparse.Namespace, port: int) -> list[ClientProc]:
    """``a.procs`` snapshot clients, each its share of the streams and its own source address."""
    clients, first = [], 0
    for i, n in enumerate(split(a.streams, a.procs)):
        args = ["--port", str(port), "--streams", str(n), "--first", str(first),
                "--merchants", str(a.merchants), "--jobs", str(a.jobs)]
        if a.procs > 1:
            args += ["--source-ip", f"127.0.{1 + i // 250}.{2 + i % 250}"]
        clients.append(ClientProc(args, module="bench.snapshot_client"))
        first += n
    return clients


def storm(clients: list[ClientProc]) -> dict:
    """Every client opens its streams at the same moment; their answers merged."""
    for c in clients:
        c.send("storm")
    answers = [c.receive("storm") for c in clients]
    counts: dict[str, int] = {}
    for ans in answers:
        for k, v in ans["counts"].items():
            counts[k] = counts.get(k, 0) + v
    max_ns = max(ans["max_ns"] for ans in answers)
    lat = hist.summary(hist.merge(a["hist"] for a in answers), max_ns)
    return {
        "snapshots": sum(a["snapshots"] for a in answers),
        "wrong_jobs": sum(a["wrong_jobs"] for a in answers),
        "storm_wall_s": max(a["wall_s"] for a in answers),
        "snapshot_p50_s": round(lat.get("p50_ms", 0) / 1e3, 3),
        "snapshot_p99_s": round(lat.get("p99_ms", 0) / 1e3, 3),
        "snapshot_max_s": round(lat.get("max_ms", 0) / 1e3, 3),
        "refused": sum(v for k, v in counts.items() if k.startswith("status_")),
        "connect_failed": counts.get("connect_failed", 0),
        "resyncs": counts.get("resync", 0),
        "attempts_max": max(a["attempts_max"] for a in answers),
        "refusals": {k: v for k, v in counts.items() if not k.startswith(("status_", "resync"))
                     and k not in ("snapshot", "connect_failed", "out_of_order")},
        "client_cpu_s": round(sum(a["client_cpu_s"] for a in answers), 2),
    }


def measured_storm(a: argparse.Namespace, redis: RedisServer, gw: SharedRedisGateway,
                   clients: list[ClientProc]) -> dict:
    """The storm with Redis's command counts and the CPU of everything around it."""
    reads0 = {c: command_calls(redis.url, c) for c in READS}
    gw_pids, rpids = procstat.tree(gw.root_pid), [redis.pid] if redis.pid else []
    g0, r0 = procstat.cpu_seconds(gw_pids), procstat.cpu_seconds(rpids)
    busy0, load0 = procstat.machine_busy_seconds(), procstat.load_average()
    out = storm(clients)
    busy = procstat.machine_busy_seconds() - busy0
    gcpu, rcpu = procstat.cpu_seconds(gw_pids) - g0, procstat.cpu_seconds(rpids) - r0
    reads = {c: command_calls(redis.url, c) - reads0[c] for c in READS}
    samples = gateway_samples(gw.port)
    wall = max(out["storm_wall_s"], 1e-3)
    out.update(
        state_reads_redis=reads["hgetall"], multi_redis=reads["multi"], exec_redis=reads["exec"],
        state_reads_per_merchant=round(reads["hgetall"] / a.merchants, 3),
        snapshots_gateway=samples.get("gateway_snapshots_total", 0),
        gateway_cpu_s=round(gcpu, 2), redis_cpu_s=round(rcpu, 2),
        gateway_us_per_stream=round(gcpu * 1e6 / a.streams),
        other_cores=round(max(busy - gcpu - rcpu - out["client_cpu_s"], 0) / wall, 2),
        load_average=round(load0, 2),
    )
    out["missing"] = a.streams - out["snapshots"]
    return out


def run_snapshot_storm(a: argparse.Namespace) -> dict:
    """One storm; the figures as a dict (``error`` set when something failed)."""
    a.procs = a.procs or math.ceil(a.streams / STREAMS_PER_CLIENT)
    tmp = make_tmp()
    pg = start_postgres(a.merchants)
    redis = RedisServer()
    redis.start()
    out: dict = {"bench": "snapshot_storm", "streams": a.streams, "merchants": a.merchants,
                 "jobs": a.jobs, "workers": a.workers, "procs": a.procs,
                 "query_timeout": a.query_timeout or "default"}
    gw: SharedRedisGateway | None = None
    clients: list[ClientProc] = []
    try:
        out["seed_s"] = round(publish_round(redis.url, a.merchants, a.jobs), 2)
        port = free_port()
        gw = SharedRedisGateway(redis.url, port, a.query_timeout, "snapshot-storm", a.workers,
                                tmp, pg.dsn, a.streams)
        gw.start()
        clients = start_clients(a, port)
        out.update(measured_storm(a, redis, gw, clients))
    except Exception as e:  # reported, not raised: the bench prints what it has
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        for c in clients:
            c.close()
        if gw is not None:
            gw.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def passed(r: dict) -> bool:
    """Every stream got its snapshot, holding every job of its merchant."""
    return "error" not in r and r["missing"] == 0 and r["wrong_jobs"] == 0


def report(r: dict) -> str:
    if "error" in r:
        return f"snapshot storm: ERROR {r['error']}"
    ok = passed(r)
    return "\n".join([
        f"snapshot storm: {r['streams']:,} streams over {r['merchants']:,} merchants, each "
        f"merchant {r['jobs']} jobs of state, all connecting at once without Last-Event-ID "
        f"to a new gateway (workers={r['workers']}, {r['procs']} client process(es))",
        f"  snapshots {r['snapshots']:,}/{r['streams']:,} (missing {r['missing']}, wrong job "
        f"count {r['wrong_jobs']}); gateway counted {r['snapshots_gateway']:,.0f}",
        f"  time from connect to snapshot: p50 {r['snapshot_p50_s']} s, p99 "
        f"{r['snapshot_p99_s']} s, max {r['snapshot_max_s']} s; refused attempts "
        f"{r['refused']}, failed connects {r['connect_failed']}, resync {r['resyncs']}"
        + "".join(f"\n    refused: {why!r} x{n}" for why, n in r["refusals"].items()),
        f"  state reads: Redis HGETALL {r['state_reads_redis']:,} "
        f"({r['state_reads_per_merchant']:.2f} per merchant), MULTI {r['multi_redis']:,}, "
        f"EXEC {r['exec_redis']:,}",
        f"  CPU: gateway {r['gateway_cpu_s']} s ({r['gateway_us_per_stream']:,} us per stream), "
        f"Redis {r['redis_cpu_s']} s, clients {r['client_cpu_s']} s; other work on the "
        f"machine {r['other_cores']} cores (load average {r['load_average']})"
        + (" -- BUSY machine: times are inflated" if r["other_cores"] >= 0.3 else ""),
        f"  {'OK' if ok else 'FAILED'}: every stream got its snapshot with every job",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.snapshot_storm",
                                description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=20, help="jobs of state per merchant")
    p.add_argument("--workers", type=int, default=1, help="gateway server.workers [1]")
    p.add_argument("--procs", type=int, default=0,
                   help=f"client processes [streams / {STREAMS_PER_CLIENT:,}, rounded up]")
    p.add_argument("--query-timeout", type=float, default=0,
                   help="gateway postgres.query_timeout [its default]")
    p.add_argument("--record", default=str(jobs_record.RECORD),
                   help="bench record to write the row to ('' = none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_nofile()
    t0 = time.monotonic()
    r = run_snapshot_storm(a)
    r["run_s"] = round(time.monotonic() - t0, 1)
    print(report(r))
    if a.record:
        path = jobs_record.write("snapshot_storm", [r], Path(a.record),
                                 " ".join(["python -m bench.snapshot_storm",
                                           *(sys.argv[1:] if argv is None else argv)]), vars(a))
        print(f"record: {path}")
    return 0 if passed(r) else 1  # a FAILED report is a failed run


if __name__ == "__main__":
    sys.exit(main())
