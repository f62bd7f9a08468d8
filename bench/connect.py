"""``python -m bench.connect``: what a new stream costs, beside nginx+nchan and aiohttp's floor.

For each system in turn (``gateway1``, ``nchan-memory``, ``aiohttp-floor``: a bare
aiohttp handler that prepares a streaming response and writes one frame,
``bench/floor_app.py``; ``aiohttp-lowlevel``: the same handler on aiohttp's
low-level server, what is left of aiohttp below its web layer), in the same run:

1. start it (the gateway with the shipped log level, INFO, and a PostgreSQL
   holding merchants ``m0..m{M-1}``) and open one stream per merchant, held:
   every merchant is then cached and subscribed, so a new stream takes the
   path accept -> headers -> merchant check from the cache -> attach -> first frame;
2. read the server's idle CPU for ``--idle`` s;
3. for each rate R: open new streams at R per second for D seconds, open loop
   (``bench/connect_client.py``), each held once its first frame arrived; the
   server's CPU (utime+stime of its process tree, /proc) over the ramp, divided
   by the streams opened, is its CPU per new stream; new streams per second
   sustained (first frames / time from the ramp's start to the last first
   frame) and time to first frame (p50/p99/max, from the client's connect());
   then the ramp's streams are closed and the next rate starts after ``--settle`` s.

Printed: a table per run and the gateway's CPU per new stream over the floor's
and over nchan's at each rate. Rows go to ``docs/bench/connect.jsonl`` (``--record
''``: none), stamped by ``bench/records.py`` (time, command, commit, machine,
parameters); each row carries ``other_cores``, what the rest of the machine
used meanwhile.
Loopback only; every process is started here and stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from bench import hist, procstat, records
from bench.__main__ import start_postgres
from bench.client_proc import ClientProc
from bench.entry import run_main
from bench.gateway_system import Gateway
from bench.systems import Floor, Nchan, System, durable_split, make_tmp, parse_system

__all__ = ["main", "ratios", "report", "run"]

RECORD = records.DOCS / "connect.jsonl"
FLOOR = "aiohttp-floor"
LOW_LEVEL_FLOOR = "aiohttp-lowlevel"  # the same handler on aiohttp's low-level server
DEFAULT_SYSTEMS = f"gateway1,nchan-memory,{FLOOR},{LOW_LEVEL_FLOOR}"


class ShippedLogGateway(Gateway):
    """The bench gateway at the shipped log level (INFO): a stream's open line is part
    of what a new stream costs."""

    def config_text(self, admission: bool) -> str:
        return super().config_text(admission).replace("level: WARNING", "level: INFO")


def make_system(name: str, tmp: Path, pg, streams: int) -> System:
    if name in (FLOOR, LOW_LEVEL_FLOOR):
        return Floor(name, 1, tmp, low_level=name == LOW_LEVEL_FLOOR)
    kind, workers = parse_system(name)
    if kind == "gateway" and durable_split(name) is None:
        return ShippedLogGateway(name, workers, tmp, pg.dsn, streams)
    if kind.startswith("nchan"):
        return Nchan(name, workers, tmp, use_redis=(kind == "nchan-redis"))
    raise ValueError(f"the connect bench does not run {name!r}")


def _cpu(pids: list[int]) -> float:
    return procstat.cpu_seconds(pids) if pids else 0.0


def trial(name: str, a: argparse.Namespace, tmp: Path, pg) -> list[dict]:
    """One system: warm, idle, one ramp per rate; a row per rate."""
    total = a.merchants + round(max(a.rates) * a.duration)
    base = {"system": name, "merchants": a.merchants, "duration_s": a.duration,
            "cpus": os.cpu_count(), "gateway_src": a.gateway_src or "working tree"}
    sysobj = make_system(name, tmp, pg, total)
    client: ClientProc | None = None
    rows: list[dict] = []
    try:
        sysobj.start()
        time.sleep(0.5)
        client = ClientProc(["--port", str(sysobj.port), "--path-template",
                             sysobj.path_template], module="bench.connect_client")
        warm = client.ask(f"warm {a.merchants}")
        if warm["ready"] != a.merchants:
            raise RuntimeError(f"warm-up: {warm['ready']} of {a.merchants} streams opened "
                               f"({warm['status']})")
        pids = procstat.tree(sysobj.root_pid)
        rpid = sysobj.redis_pid()
        rp = [rpid] if rpid else []
        time.sleep(a.settle)
        c0, t0 = _cpu(pids), time.monotonic()
        time.sleep(a.idle)
        base["idle_cores"] = round((_cpu(pids) - c0) / (time.monotonic() - t0), 3)
        for rate in a.rates:
            rows.append(ramp(dict(base, rate=rate), client, sysobj, rp, pg, a.duration))
            client.ask("close")
            time.sleep(a.settle)
    except Exception as e:  # reported, not raised: the other systems still run
        rows.append(dict(base, rate=a.rates[0], error=f"{type(e).__name__}: {e}"))
    finally:
        if client is not None:
            client.close()
        sysobj.stop()
    return rows


def ramp(row: dict, client: ClientProc, sysobj: System, rp: list[int], pg,
         duration: float) -> dict:
    """One open-loop ramp at ``row['rate']``; its figures into ``row``."""
    pids = procstat.tree(sysobj.root_pid)
    pgp = procstat.tree(pg.pid) if pg is not None and sysobj.kind == "gateway" else []
    c0, r0, g0 = _cpu(pids), _cpu(rp), _cpu(pgp)
    busy0, t0 = procstat.machine_busy_seconds(), time.monotonic()
    res = client.ask(f"ramp {row['rate']:g} {duration:g}")
    wall = time.monotonic() - t0
    cpu, rcpu, gcpu = _cpu(pids) - c0, _cpu(rp) - r0, _cpu(pgp) - g0
    busy = procstat.machine_busy_seconds() - busy0
    ready = res["ready"]
    lat = hist.summary(hist.merge([res["ttff_hist"]]), res["ttff_max_ns"])
    refused = sum(v for k, v in res["status"].items() if k != "200")
    per_s = ready / res["wall_s"] if res["wall_s"] else 0.0
    row.update(
        streams=res["started"], ready=ready, status=res["status"], refused=refused,
        streams_per_s=round(per_s, 1), start_s=res["start_s"], behind_max=res["behind_max"],
        ttff_p50_ms=lat.get("p50_ms"), ttff_p99_ms=lat.get("p99_ms"),
        ttff_max_ms=lat.get("max_ms"),
        server_cpu_s=round(cpu, 3), us_per_stream=round(cpu * 1e6 / max(ready, 1), 1),
        redis_cpu_s=round(rcpu, 3), redis_us_per_stream=round(rcpu * 1e6 / max(ready, 1), 1),
        postgres_cpu_s=round(gcpu, 3), client_cpu_s=res["client_cpu_s"],
        other_cores=round(max(busy - cpu - rcpu - gcpu - res["client_cpu_s"], 0) / wall, 2),
        load_average=round(procstat.load_average(), 2),
    )
    row["sustained"] = bool(ready == res["started"] and not refused
                            and per_s >= 0.95 * row["rate"])
    return row


def run(a: argparse.Namespace) -> list[dict]:
    """Every system, ``--rounds`` times in alternating order; every row."""
    tmp = make_tmp()
    pg = None
    rows: list[dict] = []
    try:
        if any(s.startswith("gateway") for s in a.systems):
            pg = start_postgres(a.merchants)
        for rnd in range(a.rounds):
            for name in a.systems if rnd % 2 == 0 else a.systems[::-1]:
                for row in trial(name, a, tmp, pg):
                    rows.append(dict(row, round=rnd + 1))
                    print(f"  {name:<14} R={row['rate']:g}/s: "
                          + (f"ERROR {row['error']}" if "error" in row else
                             f"{row['us_per_stream']} us/stream, {row['streams_per_s']}/s, "
                             f"p99 {row['ttff_p99_ms']} ms"), file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _mean(rows: list[dict], system: str, rate: float, key: str) -> float | None:
    vals = [r[key] for r in rows if r["system"] == system and r["rate"] == rate
            and "error" not in r and r.get(key)]
    return sum(vals) / len(vals) if vals else None


def ratios(rows: list[dict], gateway: str = "gateway1") -> dict[float, dict[str, float]]:
    """Per rate: the gateway's CPU per new stream over each other system's (same run,
    rounds averaged)."""
    out: dict[float, dict[str, float]] = {}
    for rate in sorted({r["rate"] for r in rows}):
        mine = _mean(rows, gateway, rate, "us_per_stream")
        if mine is None:
            continue
        for other in sorted({r["system"] for r in rows} - {gateway}):
            theirs = _mean(rows, other, rate, "us_per_stream")
            if theirs:
                out.setdefault(rate, {})[other] = mine / theirs
    return out


def report(rows: list[dict], a: argparse.Namespace) -> str:
    lines = [f"connect bench: M={a.merchants} merchants (one stream each held), ramps of "
             f"{a.duration:g} s at {', '.join(f'{r:g}' for r in a.rates)} new streams/s, "
             f"{a.rounds} round(s); CPU of one core",
             f"{'system':<14} {'R/s':>6} {'opened':>7} {'ref':>4} {'streams/s':>10} "
             f"{'p50ms':>7} {'p99ms':>8} {'maxms':>8} {'us/stream':>10} {'redis us':>9} "
             f"{'idle%':>6} {'cli s':>6} {'other':>6}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['system']:<14} {r['rate']:>6g} ERROR {r['error']}")
            continue
        lines.append(
            f"{r['system']:<14} {r['rate']:>6g} {r['ready']:>7} {r['refused']:>4} "
            f"{r['streams_per_s']:>10,.0f} {r['ttff_p50_ms']:>7} {r['ttff_p99_ms']:>8} "
            f"{r['ttff_max_ms']:>8} {r['us_per_stream']:>10} {r['redis_us_per_stream']:>9} "
            f"{100 * r['idle_cores']:>6.1f} {r['client_cpu_s']:>6} {r['other_cores']:>6}"
            + ("" if r["sustained"] else "  not sustained"))
    for rate, q in ratios(rows).items():
        lines.append(f"gateway1 CPU per new stream at {rate:g}/s: " + ", ".join(
            f"{v:.2f}x {name}'s" for name, v in q.items()))
    busy = max((r.get("other_cores", 0) for r in rows), default=0)
    if busy >= 0.3:
        lines.append(f"machine busy: up to {busy} cores of other work during a ramp; "
                     "figures are noisier than on a quiet machine")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.connect",
                                description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"[{DEFAULT_SYSTEMS}]")
    p.add_argument("--merchants", type=int, default=500, help="M, one warm stream each [500]")
    p.add_argument("--rates", default="1000,2000", help="new streams/s, comma list [1000,2000]")
    p.add_argument("--duration", type=float, default=5.0, help="s of each ramp [5]")
    p.add_argument("--rounds", type=int, default=1, help="repeat, order reversed each round")
    p.add_argument("--idle", type=float, default=1.0, help="s of idle CPU read before [1]")
    p.add_argument("--settle", type=float, default=1.0, help="s after warm-up and ramps [1]")
    p.add_argument("--record", default=str(RECORD), help="JSON lines record ('' = none)")
    p.add_argument("--gateway-src", help="gateway from this directory or git revision (HEAD)")
    a = p.parse_args(argv)
    a.rates = [float(r) for r in a.rates.split(",")]
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    return a


def main(argv: list[str] | None = None) -> int:
    return run_main("bench.connect", parse_args, measure, argv)


def measure(argv: list[str], a: argparse.Namespace) -> int:
    """Every system's ramps, the report, the record."""
    rows = run(a)
    print(report(rows, a))
    if a.record:
        params = {k: v for k, v in vars(a).items() if k != "record"}
        path = records.write("connect", rows, Path(a.record),
                             records.command("bench.connect", argv), params)
        print(f"record: {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
