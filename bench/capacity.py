"""``python -m bench.capacity``: a fleet from a target load and measured unit costs.

Every cost comes from a bench result file (default ``docs/bench/unit-costs.json``,
written by ``python -m bench.unitcosts``); the arithmetic is here, the numbers
are not. See docs/capacity.md for the model's assumptions and worked examples.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Fleet", "Target", "holders", "load_costs", "main", "plan", "predict",
           "redis_publish_us", "redis_sizing", "wakeups"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COSTS = ROOT / "docs" / "bench" / "unit-costs.json"
TCP_IP_BYTES = 52  # IPv4 + TCP headers with timestamps, one packet per delivery
PING_BYTES = 13  # ": ping\n\n" in a chunk
RESP_BYTES = 40  # RESP framing of a pub/sub message besides channel and payload


@dataclass
class Target:
    """The load to plan for."""

    streams: int
    merchants: int
    rate: float  # messages/s published, over all merchants
    payload: int = 200  # bytes per message
    churn_per_min: float = 0.05  # fraction of streams reopened per minute (navigation)
    durable: bool = False  # publish through publish.lua (history) instead of PUBLISH
    pipelined: bool = False  # publishers batch many messages per round trip
    per_batch: float = 1.0  # messages arriving at a gateway together (1: independent publishers)
    max_connections: int = 20_000  # sse.max_connections, per process
    max_new_per_s: float = 500  # server.max_new_streams_per_s, per process
    heartbeat_s: float = 15  # sse.heartbeat
    recheck_s: float = 60  # postgres.recheck
    restart_window_s: float = 10  # server.shutdown_timeout: reconnects jittered over it
    retry_s: float = 3  # sse.retry_ms / 1000
    cpu_target: float = 0.6  # share of one core a gateway process may use steadily
    fill: float = 0.8  # share of max_connections a process may hold steadily
    redis_target: float = 0.5  # share of one core a Redis primary may use
    redis_mbit: float = 5000  # Mbit/s a Redis primary may send (half a 10 GbE link)
    cores_per_host: int = 8

    @property
    def tabs(self) -> float:
        return self.streams / max(self.merchants, 1)


@dataclass
class Fleet:
    """What ``plan`` answers; rates per second, CPU in cores, memory in GiB."""

    processes: int
    limited_by: str
    gateway_cores: float
    gateway_mem_gib: float
    holders_per_merchant: float
    messages_in_per_s: float
    deliveries_per_s: float
    redis_cores: float
    redis_primaries: int
    redis_limited_by: str
    redis_egress_mbit: float
    egress_mbit: float
    egress_mbit_per_host: float
    hosts: int
    pg_lookups_per_s: float
    restart: dict = field(default_factory=dict)
    redis_cost: str = ""  # the unit cost per message Redis was sized with
    redis_replica_cores: float | None = None  # a cluster's replicas (one per primary), in total


def load_costs(path: Path | str = DEFAULT_COSTS) -> dict[str, float]:
    """``{name: value}`` from a unit-costs result file."""
    data = json.loads(Path(path).read_text())
    return {k: float(v["value"]) for k, v in data["costs"].items()}


def holders(processes: int, tabs: float) -> float:
    """Expected processes holding at least one of a merchant's ``tabs`` streams.

    Streams land on processes uniformly at random (SO_REUSEPORT, load balancer).
    """
    if processes <= 1:
        return 1.0 if tabs > 0 else 0.0
    return processes * (1 - (1 - 1 / processes) ** tabs)


def wakeups(batches: float, per_batch: float, h: float, processes: int) -> float:
    """Process wakeups for ``batches`` arriving bursts of ``per_batch`` messages each.

    A process wakes for a burst when it holds the merchant of at least one of its
    messages (probability ``h / processes`` per message). Unbatched publishing
    (``per_batch`` 1) wakes every holder once per message.
    """
    if processes <= 0 or batches <= 0:
        return 0.0
    share = min(h / processes, 1.0)
    return batches * processes * (1 - (1 - share) ** max(per_batch, 1.0))


def recheck_per_s(t: Target, h: float) -> float:
    """Merchant re-verifications per second (``postgres.recheck``), fleet-wide."""
    return t.merchants * h / t.recheck_s if t.recheck_s > 0 else 0.0


def gateway_cpu_us(c: dict[str, float], t: Target, processes: int) -> float:
    """Steady gateway CPU, microseconds per second, over the whole fleet."""
    h = holders(processes, t.tabs)
    opens = t.streams * t.churn_per_min / 60
    batches = t.rate / t.per_batch
    return (
        wakeups(batches, t.per_batch, h, processes) * c.get("cpu_per_wakeup", 0.0)
        + t.rate * h * c["cpu_per_message"]
        + t.rate * t.tabs * c["cpu_per_delivery"]
        + t.streams / t.heartbeat_s * c["cpu_per_delivery"]  # pings are written like events
        + opens * c["cpu_per_stream_open"]
        + recheck_per_s(t, h) * c["cpu_per_merchant_open"]  # re-verification ~ a first open
        + processes * c["cpu_idle_per_process"] * 1e6
    )


def predict(c: dict[str, float], t: Target, processes: int) -> dict[str, float]:
    """CPU (cores) and memory (MiB) of ``processes`` gateway processes at load ``t``."""
    h = holders(processes, t.tabs)
    cpu = gateway_cpu_us(c, t, processes) / 1e6
    mem_kib = (t.streams * c["mem_per_stream"] + t.merchants * h * c["mem_per_merchant"]
               + processes * c["mem_per_process"] * 1024)
    return {"cpu_cores": cpu, "mem_mib": mem_kib / 1024, "holders": h}


def _restart(c: dict[str, float], t: Target, p: int, steady_cores: float) -> dict:
    """Every stream reconnects at once (deploy, fleet restart)."""
    pairs = t.merchants * holders(p, t.tabs)
    base_us = c["cpu_per_stream_open"] + pairs / t.streams * c["cpu_per_merchant_open"]
    spare = max(1.0 - steady_cores / p, 0.05)  # of each process's single core
    replay_us = c.get("gateway_per_replayed_event", 0) + c["cpu_per_delivery"]
    missed = 0.0
    # server.max_new_streams_per_s spends a token per PostgreSQL lookup (a shop neither
    # cached nor already being looked up), so it bounds lookups/s, not reconnects/s
    lookup_s = pairs / (p * t.max_new_per_s) if t.max_new_per_s else 0.0
    for _ in range(2):  # a replay lengthens an open, which lengthens the restart
        # only durable events outlive a restart (Redis history); plain ones end in a resync
        open_us = base_us + (min(missed, 100) * replay_us if t.durable else 0.0)
        per_proc = spare * 1e6 / open_us  # opens/s one process has CPU for
        fleet_rate = per_proc * p
        live_s = max(t.restart_window_s, t.streams / fleet_rate, lookup_s) + t.retry_s
        # events a stream misses: its reconnect delay plus, on average, half the queue
        missed = t.rate / max(t.merchants, 1) * ((live_s - t.retry_s) / 2 + t.retry_s)
    # a merchant's first reconnect on a process reads its history from Redis and puts it
    # in front of the ring; its other tabs there replay from memory (bench/storm.py)
    reads = pairs if t.durable else 0
    replayed = (t.streams if t.durable else 0) * min(missed, 100)  # sse.history caps a replay
    read_events = reads * 100  # a read returns the whole history: up to sse.history events
    return {
        "new_streams_per_s": round(t.streams / (live_s - t.retry_s)),
        "bound_by": ("admission limit" if lookup_s > max(t.restart_window_s,
                                                         t.streams / fleet_rate)
                     else "reconnect spread" if t.streams / t.restart_window_s < fleet_rate
                     else "gateway CPU"),
        "seconds_until_all_live": round(live_s, 1),
        "gateway_cores_during": round(t.streams / (live_s - t.retry_s) * open_us / 1e6
                                      + steady_cores, 2),
        "pg_lookups": round(pairs),
        "pg_lookups_per_s": round(pairs / max(live_s - t.retry_s, 1)),
        "pg_cores_during": round(pairs / max(live_s - t.retry_s, 1)
                                 * c["pg_per_lookup"] / 1e6, 2),
        "history_reads": round(reads),
        "replayed_events": round(replayed),
        "replay_redis_cpu_s": round(read_events * c["redis_per_replayed_event"] / 1e6, 2)
        if "redis_per_replayed_event" in c else None,
        "replay_gateway_cpu_s": round(replayed * replay_us / 1e6, 2),
    }


def redis_publish_us(c: dict[str, float], t: Target, cluster: bool = False) -> tuple[float, str]:
    """Redis CPU (us) of one publish with one subscriber, as ``t`` publishes, and its cost name.

    ``cluster``: ``redis_per_cluster_*`` (summed over the primaries of a Redis Cluster,
    sharded pub/sub), the single-Redis cost when the file lacks it.
    """
    kind = "durable_publish" if t.durable else "publish"
    if t.durable and "redis_per_durable_publish" not in c:
        raise KeyError("the unit costs have no durable publish cost; drop --durable")
    suffix = "_pipelined" if t.pipelined else ""
    key = f"redis_per_cluster_{kind}{suffix}"
    return (c[key], key) if cluster and key in c else (c[f"redis_per_{kind}{suffix}"],
                                                       f"redis_per_{kind}{suffix}")


def redis_sizing(c: dict[str, float], t: Target, h: float) -> dict:
    """A single Redis when one primary does; else a cluster sized with the cluster cost."""
    mbit = t.rate * h * (t.payload + RESP_BYTES + 24) * 8 / 1e6
    by_net, out = math.ceil(mbit / t.redis_mbit), {"mbit": mbit, "replica_cores": None, "note": ""}
    for cluster in (False, True):
        us, key = redis_publish_us(c, t, cluster)
        cores = t.rate * (us + (h - 1) * c["redis_per_subscriber"]) / 1e6
        by_cpu = math.ceil(cores / t.redis_target)
        if not cluster and max(by_cpu, by_net) <= 1:
            break  # one primary: no cluster
        if cluster:  # redis.cluster: true, sharded pub/sub over >= 2 primaries
            by_cpu = max(2, by_cpu)
            out["note"] = "" if "cluster" in key else " (the file has no cluster cost)"
            rkey = "redis_replica_per_cluster_" + ("durable_publish" if t.durable else "publish")
            out["replica_cores"] = round(t.rate * c[rkey] / 1e6, 3) if rkey in c else None
    return dict(out, cores=cores, primaries=max(1, by_cpu, by_net),
                cost=f"{key} {us:g} us/msg{out['note']}",
                limited_by="network" if by_net > by_cpu else "CPU")


def plan(c: dict[str, float], t: Target) -> Fleet:
    """Gateway processes (one core each), Redis, egress and restart cost for ``t``."""
    p = p_conn = max(1, math.ceil(t.streams / (t.max_connections * t.fill)))
    for _ in range(100):  # holders() grows with p: iterate to the fixed point
        need = math.ceil(gateway_cpu_us(c, t, p) / 1e6 / t.cpu_target)
        if need <= p:
            break
        p = need
    pred = predict(c, t, p)
    h, deliveries = pred["holders"], t.rate * t.tabs
    r = redis_sizing(c, t, h)
    egress = (deliveries * (t.payload + c["frame_overhead"] + TCP_IP_BYTES)
              + t.streams / t.heartbeat_s * (PING_BYTES + TCP_IP_BYTES)) * 8 / 1e6
    hosts = math.ceil(p / t.cores_per_host)
    pairs = t.merchants * h
    pg = recheck_per_s(t, h) + min(t.streams * t.churn_per_min / 60, pairs / 30)
    return Fleet(
        processes=p,
        limited_by="connections (sse.max_connections)" if p == p_conn else "gateway CPU",
        gateway_cores=round(pred["cpu_cores"], 2),
        gateway_mem_gib=round(pred["mem_mib"] / 1024, 2),
        holders_per_merchant=round(h, 2),
        messages_in_per_s=round(t.rate * h),
        deliveries_per_s=round(deliveries),
        redis_cores=round(r["cores"], 3), redis_primaries=r["primaries"],
        redis_limited_by=r["limited_by"], redis_egress_mbit=round(r["mbit"], 1),
        egress_mbit=round(egress, 1),
        egress_mbit_per_host=round(egress / hosts, 1),
        hosts=hosts,
        pg_lookups_per_s=round(pg, 1),
        restart=_restart(c, t, p, pred["cpu_cores"]),
        redis_cost=r["cost"], redis_replica_cores=r["replica_cores"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity",
                                description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, help="concurrent streams [merchants x tabs]")
    p.add_argument("--merchants", type=int, help="merchants with open streams [streams / tabs]")
    p.add_argument("--tabs", type=float, default=2.0, help="streams per merchant [2]")
    p.add_argument("--rate", type=float, default=0.0, help="messages/s published in total")
    p.add_argument("--payload", type=int, default=200, help="bytes per message [200]")
    p.add_argument("--churn", type=float, default=0.05, help="share of streams reopened/min")
    p.add_argument("--durable", action="store_true", help="publish through publish.lua")
    p.add_argument("--pipelined", action="store_true", help="publishers pipeline (batch)")
    p.add_argument("--per-batch", type=float, default=1.0,
                   help="messages reaching a gateway in one burst [1: independent publishers]")
    p.add_argument("--restart-window", type=float, default=10,
                   help="s over which a restart spreads reconnects (server.shutdown_timeout) [10]")
    p.add_argument("--heartbeat", type=float, default=15, help="sse.heartbeat s [15]")
    p.add_argument("--max-connections", type=int, default=20_000)
    p.add_argument("--max-new-per-s", type=float, default=500)
    p.add_argument("--cpu-target", type=float, default=0.6)
    p.add_argument("--costs", default=str(DEFAULT_COSTS), help="unit-costs JSON")
    p.add_argument("--json", action="store_true", help="print the fleet as JSON")
    p.add_argument("--show-costs", action="store_true", help="print the unit costs (markdown)")
    a = p.parse_args(argv)
    if a.show_costs:
        from bench.report import costs_markdown

        print(costs_markdown(json.loads(Path(a.costs).read_text())))
        return 0
    if not a.streams and not a.merchants:
        p.error("give --streams or --merchants")
    streams = a.streams or round(a.merchants * a.tabs)
    merchants = a.merchants or max(1, round(streams / a.tabs))
    t = Target(streams, merchants, a.rate, payload=a.payload, churn_per_min=a.churn,
               durable=a.durable, pipelined=a.pipelined, per_batch=a.per_batch,
               max_connections=a.max_connections, max_new_per_s=a.max_new_per_s,
               cpu_target=a.cpu_target, restart_window_s=a.restart_window,
               heartbeat_s=a.heartbeat)
    f = plan(load_costs(a.costs), t)
    from bench.report import render_fleet

    print(json.dumps(asdict(f), indent=1) if a.json else render_fleet(t, f))
    print(f"(unit costs: {a.costs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
