"""``python -m bench.publish_http``: durable events per second into Redis over HTTP.

One gateway process (``POST {path}/publish`` with ``auth.publish_key``: arrays of
``--batch`` events, and single objects) beside nginx + nchan's HTTP publisher
endpoint with its Redis store (``POST /pub/{channel}``, one message per
request: its API has no batches), in the same run. Each gets its own Redis.

A closed loop per connection: ``--conns`` keep-alive connections each keep
``--depth`` pipelined requests outstanding for ``--duration`` seconds. Counted:
events acknowledged with 2xx, the server's and Redis's CPU per event, and
Redis's own count of script runs (``INFO commandstats``), which shows the events
were recorded, not only answered. Stops by itself; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import procstat
from bench.__main__ import start_postgres
from bench.publishers import PipelinedHttp
from bench.redis_costs import command_calls
from bench.systems import Gateway, Nchan, System, make_tmp

__all__ = ["main"]

KEY = "bench-publish-key-0123456789"


class PublishingGateway(Gateway):
    """bench.systems.Gateway with the HTTP publish API switched on."""

    def config_text(self, admission: bool) -> str:
        return super().config_text(admission) + f"auth:\n  publish_key: {KEY}\n"


class ClosedLoop(PipelinedHttp):
    """Keeps ``depth`` pipelined requests outstanding until ``stop_at``."""

    def __init__(self, requests: list[bytes], depth: int, stop_at: float) -> None:
        super().__init__()
        self.requests = requests
        self.depth = depth
        self.stop_at = stop_at
        self.sent = 0
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.top_up()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.top_up()

    def top_up(self) -> None:
        if asyncio.get_running_loop().time() >= self.stop_at:
            if self.responses >= self.sent and not self.finished.done():
                self.finished.set_result(None)
            return
        n = self.depth - (self.sent - self.responses)
        if n > 0 and self.transport is not None:
            reqs = self.requests
            self.transport.write(b"".join(reqs[(self.sent + i) % len(reqs)] for i in range(n)))
            self.sent += n


def gateway_requests(port: int, batch: int, merchants: int, variants: int = 64) -> list[bytes]:
    head = (f"POST /api/realtime/events/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n")
    out = []
    for v in range(variants):
        items = [{"merchantId": f"m{(v * batch + j) % merchants}", "event": "progress",
                  "data": {"jobId": f"j{v}-{j}", "percent": j % 100}} for j in range(batch)]
        body = json.dumps(items[0] if batch == 1 else items, separators=(",", ":")).encode()
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def nchan_requests(port: int, merchants: int, variants: int = 64) -> list[bytes]:
    out = []
    for v in range(variants):
        body = json.dumps({"jobId": f"j{v}", "percent": v % 100}, separators=(",", ":")).encode()
        out.append(f"POST /pub/m{v % merchants} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                   + body)
    return out


async def drive(port: int, requests: list[bytes], conns: int, depth: int,
                duration: float) -> tuple[int, int, float]:
    """(2xx responses, other responses, seconds) of a closed loop on ``conns`` connections."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    protos = []
    for _ in range(conns):
        _, proto = await loop.create_connection(
            lambda: ClosedLoop(requests, depth, stop_at), "127.0.0.1", port)
        protos.append(proto)
    t0 = loop.time()
    await asyncio.wait([p.finished for p in protos], timeout=duration + 30)
    wall = loop.time() - t0
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    ok = sum(p.responses - p.bad for p in protos)
    return ok, sum(p.bad for p in protos), wall


def script_runs(system: System) -> int:
    """EVAL/EVALSHA calls Redis served (durable publishes run one script each)."""
    assert system.redis is not None
    return command_calls(system.redis.url, "evalsha", "eval")


def measure(system: System, requests: list[bytes], per_request: int,
            a: argparse.Namespace) -> dict:
    pids = procstat.tree(system.root_pid)
    rpid = system.redis_pid()
    rp = [rpid] if rpid else []
    runs0 = script_runs(system)
    c0, r0 = procstat.cpu_seconds(pids), procstat.cpu_seconds(rp)
    ok, bad, wall = asyncio.run(drive(system.port, requests, a.conns, a.depth, a.duration))
    cpu, rcpu = procstat.cpu_seconds(pids) - c0, procstat.cpu_seconds(rp) - r0
    events = ok * per_request
    return {"events": events, "events_per_s": round(events / wall), "requests_per_s":
            round(ok / wall), "refused": bad, "server_us_per_event": round(cpu * 1e6 /
            max(events, 1), 1), "redis_us_per_event": round(rcpu * 1e6 / max(events, 1), 1),
            "script_runs": script_runs(system) - runs0}


def run(a: argparse.Namespace) -> list[dict]:
    tmp = make_tmp()
    rows: list[dict] = []
    pg = start_postgres(a.merchants)
    try:
        trials: list[tuple[str, Callable[[], System], Callable[[int], list[bytes]], int]] = [
            ("gateway1 POST /publish, arrays", lambda: PublishingGateway(
                "gateway1", 1, tmp, pg.dsn, 100), lambda p: gateway_requests(
                p, a.batch, a.merchants), a.batch),
            ("gateway1 POST /publish, single", lambda: PublishingGateway(
                "gateway1", 1, tmp, pg.dsn, 100), lambda p: gateway_requests(
                p, 1, a.merchants), 1),
            ("nchan-redis POST /pub", lambda: Nchan("nchan-redis", 1, tmp, use_redis=True),
             lambda p: nchan_requests(p, a.merchants), 1),
        ]
        for label, make, requests, per_request in trials:
            system = make()
            try:
                system.start()
                time.sleep(0.5)
                row = {"system": label, "per_request": per_request,
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
             f"{a.duration:g} s each, {a.merchants} merchants",
             f"{'system':<34} {'per req':>7} {'events/s':>9} {'req/s':>7} {'srv us/ev':>9} "
             f"{'redis us/ev':>11} {'scripts':>8} {'refused':>7}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['system']:<34} ERROR {r['error']}")
            continue
        lines.append(f"{r['system']:<34} {r['per_request']:>7} {r['events_per_s']:>9,} "
                     f"{r['requests_per_s']:>7,} {r['server_us_per_event']:>9} "
                     f"{r['redis_us_per_event']:>11} {r['script_runs']:>8,} {r['refused']:>7}")
    rate = {r["system"]: r["events_per_s"] for r in rows if "error" not in r}
    nchan = rate.get("nchan-redis POST /pub")
    for label in ("arrays", "single"):
        gateway = rate.get(f"gateway1 POST /publish, {label}")
        if gateway and nchan:
            lines.append(f"gateway {label} / nchan: {gateway / nchan:.2f}x events/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.publish_http",
                                description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--depth", type=int, default=8, help="pipelined requests per connection")
    p.add_argument("--batch", type=int, default=100, help="events per array")
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = run(a)
    print(report(rows, a))
    if a.json:
        Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
