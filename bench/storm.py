"""``python -m bench.storm``: the reconnect storm after a restart, with durable history.

1. One Redis, one PostgreSQL (merchants m0..m{M-1}), gateway A on port P.
2. The storm client (``bench/storm_client.py``) opens N streams over M merchants;
   one durable event per merchant gives every stream a durable Last-Event-ID.
3. A is stopped (SIGTERM). While no gateway runs, ``--missed`` durable events
   per merchant are published.
4. Gateway B, a new process with the default `server.max_new_streams_per_s`,
   starts on the same port (the restart, timed from its spawn; its config was
   checked before). Once it answers, every stream reconnects at once with its
   Last-Event-ID.
5. Measured: how long after the restart each stream had its missed events
   back (in order, none twice, none lost), ``resync`` frames, how many history
   reads Redis served (``XRANGE`` calls in ``INFO commandstats``) against the
   number of merchants; then one more event per merchant proves every stream live.

Stops by itself (every wait is bounded); loopback only; processes stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import hist, procstat, records
from bench.__main__ import raise_nofile, start_postgres
from bench.client_proc import ClientProc
from bench.gateway_system import Gateway
from bench.redis_costs import command_calls
from bench.systems import make_tmp
from bench.trial import gateway_samples
from tools.services import RedisServer

__all__ = ["main", "run_storm"]

REPLAYED_REDIS = 'gateway_replayed_events_total{source="redis"}'


class SharedRedisGateway(Gateway):
    """A gateway on a given Redis and port, so that a second process replaces the first."""

    def __init__(self, redis_url: str, port: int, query_timeout: float, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.shared_url = redis_url
        self.port = port
        self.query_timeout = query_timeout  # postgres.query_timeout; 0: the default

    def redis_url(self) -> str:
        return self.shared_url  # not ours to stop

    def config_text(self, admission: bool) -> str:
        # server.max_new_streams_per_s at its default: the storm as a default deploy meets it
        text = super().config_text(False)
        if not self.query_timeout:
            return text
        dsn = "postgres:\n  dsn: ${DATABASE_URL}\n"
        return text.replace(dsn, f"{dsn}  query_timeout: {self.query_timeout:g}\n")


def publish_round(redis_url: str, merchants: int, rounds: int) -> float:
    """``rounds`` durable events per merchant through publish.lua; seconds taken."""
    import redis.asyncio as aioredis

    from gateway.durable.publisher import AsyncPublisher

    async def go() -> float:
        client = aioredis.Redis.from_url(redis_url)
        try:
            pub = AsyncPublisher(client)
            t0 = time.monotonic()
            for k in range(rounds):
                # a jobId per event: progress of one job may be coalesced, and
                # every stream must get every missed event back
                items = [(f"m{i}", "progress", b'{"jobId":"j%d-%d","seq":%d}' % (i, k, k))
                         for i in range(merchants)]
                for j in range(0, merchants, 500):
                    await pub.publish_many(items[j:j + 500])
            return time.monotonic() - t0
        finally:
            await client.aclose()

    return asyncio.run(go())


def run_storm(a: argparse.Namespace) -> dict:
    """One storm; the figures as a dict (``error`` set when something failed)."""
    tmp = make_tmp()
    pg = start_postgres(a.merchants)
    redis = RedisServer()
    redis.start()
    out: dict = {"streams": a.streams, "merchants": a.merchants, "missed": a.missed,
                 "workers": a.workers, "query_timeout": a.query_timeout or "default"}
    gws: list[Gateway] = []
    clients: list[ClientProc] = []
    try:
        from tools.services import free_port

        port = free_port()

        def gateway(name: str) -> Gateway:
            gw = SharedRedisGateway(redis.url, port, a.query_timeout, name, a.workers, tmp,
                                    pg.dsn, a.streams)
            gws.append(gw)
            return gw

        storm(a, redis.url, port, gateway, clients, out)
    except Exception as e:  # reported, not raised: the bench prints what it has
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        for client in clients:
            client.close()
        for gw in gws:
            gw.stop()
        redis.stop()
        pg.stop()
        log = tmp / "storm-b.log"
        if log.exists():  # what the restarted gateway warned about, once per kind
            out["log_warnings"] = warnings_once(log)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def storm(a: argparse.Namespace, redis_url: str, port: int,
          gateway: Callable[[str], Gateway], clients: list[ClientProc], out: dict) -> None:
    """Open and seed every stream, stop the gateway, publish what they miss, restart, replay."""
    first = gateway("storm-a")
    first.start()
    client = ClientProc(["--port", str(port), "--streams", str(a.streams),
                         "--merchants", str(a.merchants), "--missed", str(a.missed)])
    clients.append(client)
    opened = client.ask("open")
    out["open_s"] = opened["open_s"]
    if opened["ready"] != a.streams:
        raise RuntimeError(f"only {opened['ready']} of {a.streams} streams opened")
    publish_round(redis_url, a.merchants, 1)
    seeded = client.ask("expect 1")
    if seeded["complete"] != a.streams:
        raise RuntimeError(f"seed event reached {seeded['complete']} of {a.streams} streams")
    first.stop()
    out["publish_missed_s"] = round(publish_round(redis_url, a.merchants, a.missed), 2)
    xrange_before = command_calls(redis_url, "xrange")
    second = gateway("storm-b")
    second.configure()  # check-config runs before the restart is timed
    restart_ns, t0 = time.time_ns(), time.monotonic()
    second.launch()
    out["ready_after_s"] = round(time.monotonic() - t0, 2)
    client.ask(f"reconnect {restart_ns}")
    gw_pids = procstat.tree(second.root_pid)
    replayed = client.ask(f"expect {1 + a.missed}")
    out["replay_wall_s"] = round(time.monotonic() - t0, 2)
    out["gateway_cpu_s"] = round(procstat.cpu_seconds(gw_pids), 2)  # since its start
    live_t0 = time.monotonic()
    publish_round(redis_url, a.merchants, 1)
    live = client.ask(f"expect {2 + a.missed}")
    out["live_after_publish_s"] = round(time.monotonic() - live_t0, 2)
    out.update(replay_figures(replayed, live, port, redis_url, xrange_before))


def replay_figures(replayed: dict, live: dict, port: int, redis_url: str,
                   xrange_before: int) -> dict:
    """Replay latency, what the streams counted, history reads (Redis, gateway metrics)."""
    lat = hist.summary(hist.merge([replayed["replay_hist"]]), replayed["replay_max_ns"])
    samples = gateway_samples(port)
    return dict(
        replayed_streams=replayed["complete"], live_streams=live["complete"],
        replay_p50_s=round(lat.get("p50_ms", 0) / 1e3, 2),
        replay_p99_s=round(lat.get("p99_ms", 0) / 1e3, 2),
        replay_max_s=round(lat.get("max_ms", 0) / 1e3, 2),
        resyncs=live["counts"].get("resync", 0),
        out_of_order=live["counts"].get("out_of_order", 0),
        refused=sum(v for k, v in live["counts"].items() if k.startswith("status_")),
        refusals=refusal_messages(live["counts"]),
        client_cpu_s=live["client_cpu_s"],
        history_reads_redis=command_calls(redis_url, "xrange") - xrange_before,
        history_reads_gateway=samples.get("gateway_history_reads_total", 0),
        replayed_from_redis=samples.get(REPLAYED_REDIS, 0),
    )


def refusal_messages(counts: dict[str, int]) -> dict[str, int]:
    """Refused attempts by the refusal's message (the client counts those beside the rest)."""
    own = ("status_", "resync", "out_of_order", "connect_failed", "gave_up")
    return {k: v for k, v in counts.items() if not k.startswith(own)}


def warnings_once(log: Path) -> list[str]:
    """The WARNING and ERROR lines of a gateway log, once per kind (merchant ids folded)."""
    seen: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " WARNING " in line or " ERROR " in line:
            kind = re.sub(r"merchant=\S+", "merchant=...", line.split(" ", 3)[-1])
            seen.setdefault(kind[:160])
    return list(seen)[:10]


P99_BOUND_S = 5.0  # the storm's goal: every stream replayed this soon after the restart


def passed(r: dict) -> bool:
    """Every stream replayed exactly its missed events, in order, without resync or
    refusal, 99 % of them within `P99_BOUND_S` of the restart."""
    return "error" not in r and (
        r["replayed_streams"] == r["live_streams"] == r["streams"] and not r["resyncs"]
        and not r["out_of_order"] and not r["refused"] and r["replay_p99_s"] < P99_BOUND_S)


def report(r: dict) -> str:
    if "error" in r:
        return f"storm: ERROR {r['error']}"
    warnings = [f"  gateway log: {w}" for w in r.get("log_warnings", [])]
    per_merchant = r["history_reads_redis"] / max(r["merchants"] * r["workers"], 1)
    ok = passed(r)
    return "\n".join([
        f"reconnect storm: {r['streams']:,} streams over {r['merchants']:,} merchants, each "
        f"{r['missed']} durable events behind, gateway workers={r['workers']} restarted "
        f"(postgres.query_timeout {r['query_timeout']})",
        f"  new process answering {r['ready_after_s']} s after the restart; every stream "
        f"replayed: p50 {r['replay_p50_s']} s, p99 {r['replay_p99_s']} s, "
        f"max {r['replay_max_s']} s after the restart",
        f"  replayed {r['replayed_streams']:,}/{r['streams']:,}, live {r['live_streams']:,}/"
        f"{r['streams']:,}, resync {r['resyncs']}, out of order {r['out_of_order']}, "
        f"refused attempts {r['refused']} {r.get('refusals') or ''}",
        f"  history reads: Redis XRANGE {r['history_reads_redis']:,} "
        f"({per_merchant:.2f} per merchant per process), gateway "
        f"{r['history_reads_gateway']:,.0f}; events replayed from Redis "
        f"{r['replayed_from_redis']:,.0f}",
        f"  gateway CPU from its start until every stream had replayed: {r['gateway_cpu_s']} s "
        f"({r['gateway_cpu_s'] * 1e6 / r['streams']:,.0f} us per stream); "
        f"storm client {r['client_cpu_s']} s",
        f"  {'OK' if ok else 'FAILED'}: every stream replayed exactly its missed events, "
        f"no resync, no refusal, p99 under {P99_BOUND_S:g} s",
        *warnings,
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--missed", type=int, default=20, help="durable events published while down")
    p.add_argument("--workers", type=int, default=1, help="gateway server.workers [1]")
    p.add_argument("--query-timeout", type=float, default=0,
                   help="gateway postgres.query_timeout [its default]")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--record", default=str(records.DOCS / "storm.jsonl"),
                   help="bench record to write the row to ('' = none)")
    a = p.parse_args(argv)
    raise_nofile()
    r = run_storm(a)
    print(report(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r) + "\n")
    if a.record:
        args = sys.argv[1:] if argv is None else argv
        print("record:", records.write("storm", [r], Path(a.record),
                                       records.command("bench.storm", args), vars(a)))
    return 0 if passed(r) else 1  # a FAILED report is a failed run


if __name__ == "__main__":
    sys.exit(main())
