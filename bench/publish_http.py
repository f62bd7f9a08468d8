"""``python -m bench.publish_http``: durable events per second into Redis over HTTP.

One gateway process (``POST {path}/publish`` with ``auth.publish_key``: arrays of
``--batch`` events, and single objects) beside nginx + nchan's HTTP publisher
endpoint with its Redis store (``POST /pub/{channel}``, one message per
request: its API has no batches), in the same run. Each gets its own Redis.

A closed loop per connection: ``--conns`` keep-alive connections each keep
``--depth`` pipelined requests outstanding for ``--duration`` seconds. Counted:
events acknowledged with 2xx, the server's and Redis's CPU per event, and
Redis's own count of events recorded (``INFO commandstats``: the gateway's XADDs,
nchan's script runs), which shows the events were recorded, not only answered.
Stops by itself; loopback only.

Job state (docs/publishing.md): every gateway event names a job (``c{conn}j{x}``: event
``e`` of a connection goes to job ``x = e % M`` of merchant ``m{x}``), and each
shape (arrays, single objects) is run twice per round: without and with
``seq`` (``e // M``, rising per job) and an idempotency ``key`` (unique per event)
on every event, ``--rounds`` rounds in reversed order each round. Every request
is new (no key repeats, no seq goes back), so none answers ``stale`` or
``duplicate`` (the gateway's counters, checked). Rows go to the committed record
``docs/bench/jobs.jsonl`` (``--record``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import jobs_record, procstat
from bench.__main__ import start_postgres
from bench.gateway_system import Gateway
from bench.jobs_record import KEYED
from bench.publish_load import JobRequests, Requests, cycled, drive, nchan_requests
from bench.publishers import PUBLISH_KEY
from bench.redis_costs import command_calls
from bench.systems import Nchan, System, make_tmp
from bench.trial import gateway_samples

__all__ = ["failures", "main"]


class PublishingGateway(Gateway):
    """bench.gateway_system.Gateway with the HTTP publish API switched on."""

    def config_text(self, admission: bool) -> str:
        return super().config_text(admission) + f"auth:\n  publish_key: {PUBLISH_KEY}\n"


def recorded(system: System) -> int:
    """Events Redis recorded: the gateway's script adds each to its history (XADD, one
    script run per batch of events); nchan runs one script per message."""
    assert system.redis is not None
    commands = ("xadd",) if isinstance(system, Gateway) else ("evalsha", "eval")
    return command_calls(system.redis.url, *commands)


Trial = tuple[str, Callable[[], System], Callable[[int], Requests], int]


def measure(system: System, requests: Requests, per_request: int, a: argparse.Namespace) -> dict:
    pids = procstat.tree(system.root_pid)
    rpid = system.redis_pid()
    rp = [rpid] if rpid else []
    recorded0 = recorded(system)
    c0, r0 = procstat.cpu_seconds(pids), procstat.cpu_seconds(rp)
    busy0, self0 = procstat.machine_busy_seconds(), procstat.cpu_seconds([os.getpid()])
    ok, bad, wall = asyncio.run(drive(system.port, requests, a.conns, a.depth, a.duration))
    cpu, rcpu = procstat.cpu_seconds(pids) - c0, procstat.cpu_seconds(rp) - r0
    ours = cpu + rcpu + procstat.cpu_seconds([os.getpid()]) - self0
    other = max(procstat.machine_busy_seconds() - busy0 - ours, 0.0) / wall
    events = ok * per_request
    row = {"events": events, "events_per_s": round(events / wall), "requests_per_s":
           round(ok / wall), "refused": bad, "server_us_per_event": round(cpu * 1e6 /
           max(events, 1), 1), "redis_us_per_event": round(rcpu * 1e6 / max(events, 1), 1),
           "recorded": recorded(system) - recorded0, "other_cores": round(other, 2)}
    if isinstance(system, Gateway):  # answered stale or duplicate: not new events
        samples = gateway_samples(system.port)
        row["stale"] = samples.get("gateway_publish_stale_total", 0)
        row["duplicates"] = samples.get("gateway_publish_duplicates_total", 0)
    return row


def trials(a: argparse.Namespace, tmp: Path, dsn: str) -> list[Trial]:
    """Each shape without and with key+seq, per round; odd rounds in reverse order."""
    def gateway() -> System:
        return PublishingGateway("gateway1", 1, tmp, dsn, 100)

    def jobs(batch: int, keyed: bool) -> Callable[[int], Requests]:
        return lambda port: lambda c: JobRequests(port, batch, a.merchants, c, keyed)

    one = [(f"gateway1 POST /publish, {shape}{KEYED if keyed else ''}", gateway,
            jobs(batch, keyed), batch)
           for shape, batch in (("arrays", a.batch), ("single", 1)) for keyed in (False, True)]
    out: list[Trial] = []
    for rnd in range(a.rounds):
        out += one if rnd % 2 == 0 else one[::-1]
    if a.nchan:
        out.append(("nchan-redis POST /pub", lambda: Nchan("nchan-redis", 1, tmp, use_redis=True),
                    lambda p: lambda c: cycled(nchan_requests(p, a.merchants)), 1))
    return out


def run(a: argparse.Namespace) -> list[dict]:
    tmp = make_tmp()
    rows: list[dict] = []
    pg = start_postgres(a.merchants)
    try:
        for label, make, requests, per_request in trials(a, tmp, pg.dsn):
            system = make()
            try:
                system.start()
                time.sleep(0.5)  # settle after start (not a synchronisation: it already answers)
                row = {"system": label, "per_request": per_request, "rounds": a.rounds,
                       **measure(system, requests(system.port), per_request, a)}
            except Exception as e:
                row = {"system": label, "error": f"{type(e).__name__}: {e}"}
            finally:
                system.stop()
            rows.append(row)
            print(f"  {label}: {row.get('events_per_s', row.get('error'))} events/s",
                  file=sys.stderr, flush=True)
    finally:
        pg.stop()
    return rows


def report(rows: list[dict], a: argparse.Namespace) -> str:
    lines = [f"HTTP publish into Redis: {a.conns} connections x {a.depth} pipelined requests, "
             f"{a.duration:g} s each, {a.merchants} merchants, {a.rounds} round(s)",
             f"{'system':<42} {'per req':>7} {'events/s':>9} {'req/s':>7} {'srv us/ev':>9} "
             f"{'redis us/ev':>11} {'recorded':>8} {'refused':>7} {'other':>5}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['system']:<42} ERROR {r['error']}")
            continue
        lines.append(f"{r['system']:<42} {r['per_request']:>7} {r['events_per_s']:>9,} "
                     f"{r['requests_per_s']:>7,} {r['server_us_per_event']:>9} "
                     f"{r['redis_us_per_event']:>11} {r['recorded']:>8,} {r['refused']:>7} "
                     f"{r['other_cores']:>5}")
    ok = [r for r in rows if "error" not in r]
    nchan = next((r["events_per_s"] for r in ok if r["system"] == "nchan-redis POST /pub"), None)
    for label in ("arrays", "single"):
        name = f"gateway1 POST /publish, {label}"
        gateway = [r["events_per_s"] for r in ok if r["system"] == name]
        if gateway and nchan:
            lines.append(f"gateway {label} / nchan: {sum(gateway) / len(gateway) / nchan:.2f}x "
                         "events/s")
    return "\n".join(lines + keyed_lines(ok))


def keyed_within(q: dict) -> bool:
    """key+seq costs at most 10 % (events/s and CPU per event) over the publish without."""
    return q["events_per_s"] >= 0.9 and q["cpu_per_event"] <= 1.1


def failures(rows: list[dict]) -> list[str]:
    """The bounds the report failed: a trial's error, a refused request, a gateway event
    answered stale or duplicate (every request is new), key+seq NOT within 10 %."""
    out = [f"{r['system']}: {r['error']}" for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    out += [f"{r['system']}: {r['refused']} requests refused" for r in ok if r.get("refused")]
    out += [f"{r['system']}: stale {r.get('stale', 0):g}, duplicates {r.get('duplicates', 0):g}"
            for r in ok if r.get("stale") or r.get("duplicates")]
    out += [f"key+seq / without, {shape}: NOT within 10 %"
            for shape, q in jobs_record.ratios(ok).items() if not keyed_within(q)]
    return out


def keyed_lines(rows: list[dict]) -> list[str]:
    """key+seq against the same publish without them (same run, rounds averaged)."""
    lines = []
    for shape, q in jobs_record.ratios(rows).items():
        within = keyed_within(q)
        lines.append(f"key+seq / without, {shape}: {q['events_per_s']:.3f}x events/s "
                     f"({q['keyed_events_per_s']:,.0f} vs {q['base_events_per_s']:,.0f}), "
                     f"{q['cpu_per_event']:.3f}x gateway+Redis CPU per event "
                     f"({q['keyed_us']:.1f} vs {q['base_us']:.1f} us): "
                     + ("within 10 %" if within else "NOT within 10 %"))
    busy = max((r.get("other_cores", 0) for r in rows), default=0)
    if busy >= 0.3:
        lines.append(f"machine busy: up to {busy} cores of other work during a trial; "
                     "figures are noisier than on a quiet machine")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.publish_http",
                                description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--depth", type=int, default=8, help="pipelined requests per connection")
    p.add_argument("--batch", type=int, default=100, help="events per array")
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the gateway trials [2]")
    p.add_argument("--no-nchan", dest="nchan", action="store_false", help="skip nchan")
    p.add_argument("--record", default=str(jobs_record.RECORD),
                   help="bench record to write the rows to ('' = none)")
    a = p.parse_args(argv)
    rows = run(a)
    print(report(rows, a))
    if a.record:
        command = " ".join(["python -m bench.publish_http", *(sys.argv[1:] if argv is None
                                                              else argv)])
        path = jobs_record.write("publish_http", rows, Path(a.record), command, vars(a))
        print(f"record: {path}")
    problems = failures(rows)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
