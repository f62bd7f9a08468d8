"""``python -m bench.cluster``: the gateway on a Redis Cluster vs on a single Redis.

One run on 127.0.0.1 (everything started here, stopped by PID, ~3 min):
a local 3+3 Redis Cluster (tools/cluster.py), a PostgreSQL holding merchants
m0..m{M-1}, and two one-worker gateways, one on a single Redis and one with
``redis.cluster: true``, each with N streams over M merchants.

1. Where publishes land: per-node ``INFO commandstats`` (after ``CONFIG
   RESETSTAT``) and ``CLUSTER INFO`` bus counters over one cluster window of
   SPUBLISH (each to the primary owning the merchant's slot), then over K
   classic PUBLISH sent to one node (the cluster bus copies those to every node).
2. Gateway CPU per delivered event, R msg/s for D s, single and cluster
   alternating (ABBA...), ``--rounds`` each; medians and their ratio.

Writes .run/bench/cluster.json and docs/bench/cluster.{json,md} (``--docs ''``: not docs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench import procstat, records
from bench.__main__ import raise_nofile, start_postgres
from bench.cluster_report import cmdstat, failures, kv_info, markdown, stats_delta, tables
from bench.gateway_system import Gateway
from bench.pool import ClientPool, merge_results
from bench.publishers import payload, publish_loop
from bench.systems import ROOT, make_tmp
from tools.cluster import RedisCluster, slot_of
from tools.services import HOST

__all__ = ["ClusterGateway", "Publisher", "main", "node_stats"]

SINGLE_CHANNEL = "merchant:m{i}:progress"  # the gateway's default channel
CLUSTER_CHANNEL = "merchant:{{m{i}}}:progress"  # its cluster default: the id is the hash tag


def node_stats(cluster: RedisCluster) -> dict[int, dict]:
    """Every node: role, slots, publish/spublish commandstats, bus counters, CPU seconds."""
    out: dict[int, dict] = {}
    nodes = cluster.nodes
    port_of = {n.node_id: n.port for n in nodes}
    for node in nodes:
        with contextlib.closing(cluster.client(node.port)) as c:
            cs = c.info("commandstats")
            bus = kv_info(c.execute_command("CLUSTER", "INFO"))
        out[node.port] = {
            "role": node.role, "of": port_of.get(node.primary_id or ""),
            "slots": sum(hi - lo + 1 for lo, hi in node.slots),
            "spublish": cmdstat(cs, "spublish"), "publish": cmdstat(cs, "publish"),
            "bus": {k[len("cluster_stats_messages_"):]: v for k, v in bus.items()
                    if "publish" in k},
            "cpu_s": procstat.cpu_seconds([node.pid]) if node.pid else 0.0,
        }
    return out


def reset_stats(cluster: RedisCluster) -> dict[int, dict]:
    """``CONFIG RESETSTAT`` on every node; the baseline read right after."""
    for port in cluster.live_ports():
        cluster.call(port, "CONFIG", "RESETSTAT")
    return node_stats(cluster)


class Publisher:
    """Message k -> merchant m{k % M}, the bench payload; PUBLISH or per-owner SPUBLISH."""

    def __init__(self, m: int, single_url: str = "", owners: dict[int, int] | None = None):
        self.m, self.single_url, self.owners = m, single_url, owners or {}
        self.next_k = 0
        self.sent_to: dict[int, int] = {}  # cluster: node port -> messages sent there

    async def _run(self, rate: float, duration: float) -> tuple[int, int, float]:
        ports = sorted(set(self.owners.values()))
        clients = ({p: aioredis.Redis(host=HOST, port=p) for p in ports} if self.owners
                   else {0: aioredis.Redis.from_url(self.single_url)})

        async def send(a: int, b: int) -> None:
            pipes = {p: c.pipeline(transaction=False) for p, c in clients.items()}
            for k in range(a, b):
                i = k % self.m
                if self.owners:
                    port = self.owners[i]
                    pipes[port].execute_command("SPUBLISH", CLUSTER_CHANNEL.format(i=i),
                                                payload(k))
                    self.sent_to[port] = self.sent_to.get(port, 0) + 1
                else:
                    pipes[0].publish(SINGLE_CHANNEL.format(i=i), payload(k))
            await asyncio.gather(*(p.execute() for p in pipes.values() if len(p)))

        first, t0 = self.next_k, time.monotonic()
        try:
            sent = await publish_loop(rate, duration, send, first)
        finally:
            for c in clients.values():
                await c.aclose()
        self.next_k = first + sent
        return first, sent, time.monotonic() - t0

    def window(self, rate: float, duration: float) -> tuple[int, int, float]:
        """Publish one window; (first message number, count, seconds)."""
        return asyncio.run(self._run(rate, duration))


class ClusterGateway(Gateway):
    """bench.gateway_system.Gateway with ``redis.cluster: true`` on an existing cluster."""

    def __init__(self, cluster: RedisCluster, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.cluster = cluster

    def config_text(self, admission: bool) -> str:
        return super().config_text(admission).replace(
            "redis:\n  url: ${REDIS_URL}\n", "redis:\n  url: ${REDIS_URL}\n  cluster: true\n")

    def client_args(self) -> list[str]:
        return ["--port", str(self.port), "--path-template", self.path_template,
                "--publish", "redis", "--redis-url", self.cluster.url, "--wait-frame"]

    def redis_url(self) -> str:
        return self.cluster.url  # not ours to start or stop


def measure(name: str, gw: Gateway, pool: ClientPool, pub: Publisher, redis_pids: list[int],
            a: argparse.Namespace) -> dict:
    """One window: listen, publish R msg/s for D s, wait for delivery; CPU per delivery."""
    pids = procstat.tree(gw.root_pid)
    for proc in pool.all:
        proc.send("listen")
    for proc in pool.all:
        proc.recv(30, "listening")
    c0, r0, t0 = procstat.cpu_seconds(pids), procstat.cpu_seconds(redis_pids), time.monotonic()
    start_ns = time.time_ns()
    first, sent, pub_s = pub.window(a.rate, a.duration)
    for proc in pool.all:
        proc.send(f"expect {first} {sent}")
    results = [proc.recv(a.drain + 60, "result") for proc in pool.all]
    wall = time.monotonic() - t0
    cpu, rcpu = procstat.cpu_seconds(pids) - c0, procstat.cpu_seconds(redis_pids) - r0
    res = merge_results({"published": sent, "publish_s": round(pub_s, 3),
                         "publish_start_ns": start_ns}, results)
    d = max(res["delivered"], 1)
    return {"system": name, **{k: res.get(k) for k in (
                "published", "expected", "delivered", "closed_during", "p50_ms", "p99_ms")},
            "window_s": round(wall, 3), "gateway_cpu_s": round(cpu, 4),
            "gateway_cpu_pct": round(100 * cpu / wall, 1),
            "us_per_delivery": round(cpu * 1e6 / d, 3),
            "redis_cpu_s": round(rcpu, 4), "redis_us_per_delivery": round(rcpu * 1e6 / d, 3)}


def classic_publish(cluster: RedisCluster, k: int, m: int) -> dict:
    """K pipelined PUBLISH to one primary; every node's counters until the bus settled."""
    port = cluster.primaries()[0].port
    before = reset_stats(cluster)
    with contextlib.closing(cluster.client(port)) as c:
        for lo in range(0, k, 500):
            pipe = c.pipeline(transaction=False)
            for j in range(lo, min(k, lo + 500)):
                pipe.publish(CLUSTER_CHANNEL.format(i=j % m), payload(j))
            pipe.execute()
    end = time.monotonic() + 5
    while True:  # bounded: until every other node counted K bus messages, or 5 s
        delta = stats_delta(before, node_stats(cluster))
        if time.monotonic() > end or all(
                r.get("bus_publish_received", 0) >= k for p, r in delta.items() if p != str(port)):
            return {"k": k, "sent_to": port, "nodes": delta}
        time.sleep(0.1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=2000, help="N streams per gateway [2000]")
    p.add_argument("--merchants", type=int, default=100, help="M merchants [100]")
    p.add_argument("--rate", type=float, default=200, help="R msg/s [200]")
    p.add_argument("--duration", type=float, default=20, help="D s per window [20]")
    p.add_argument("--rounds", type=int, default=2, help="windows per system, alternating [2]")
    p.add_argument("--drain", type=float, default=5, help="s to wait for stragglers [5]")
    p.add_argument("--classic-k", type=int, help="K classic PUBLISH [R*D]")
    p.add_argument("--json", default=str(ROOT / ".run" / "bench" / "cluster.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "bench"),
                   help="also write cluster.json and cluster.md here ('' = no)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_nofile()
    t_start, tmp = time.monotonic(), make_tmp()
    cluster, pg = None, None
    systems: dict[str, Gateway] = {}
    pools: dict[str, ClientPool] = {}
    out: dict = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "command": "python -m bench.cluster " + " ".join(argv or sys.argv[1:]),
                 "commit": records.commit(), "machine": records.machine(),
                 "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0],
                 "params": {k: getattr(a, k) for k in ("streams", "merchants", "rate",
                                                       "duration", "rounds", "drain")}}
    try:
        cluster = RedisCluster().start()
        pg = start_postgres(a.merchants)
        owners = {i: cluster.primary_for(slot_of(CLUSTER_CHANNEL.format(i=i))).port
                  for i in range(a.merchants)}
        out["merchants_per_primary"] = {str(p): list(owners.values()).count(p)
                                        for p in sorted(set(owners.values()))}
        systems.update(single=Gateway("single", 1, tmp, pg.dsn, a.streams),
                       cluster=ClusterGateway(cluster, "cluster", 1, tmp, pg.dsn, a.streams))
        for i, (name, gw) in enumerate(systems.items()):
            gw.start()
            pools[name] = ClientPool(gw.client_args(), a.streams, a.merchants, 1, a.drain,
                                     trial=i)
            ready = pools[name].open(1.0)
            print(f"{name}: {ready['ready']} streams open in {ready['open_s']} s",
                  file=sys.stderr, flush=True)
            gw.pids = procstat.tree(gw.root_pid)
        compare(a, out, cluster, systems, pools, owners)
    except BaseException:
        for log in sorted(tmp.glob("*.log")):  # why a gateway failed, before tmp goes
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-1500:]}",
                  file=sys.stderr)
        raise
    finally:
        for pool in pools.values():
            pool.close()
        for gw in systems.values():
            gw.stop()
        if pg is not None:
            pg.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["run_s"] = round(time.monotonic() - t_start, 1)
    write_out(a, out)
    problems = failures(out)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def compare(a: argparse.Namespace, out: dict, cluster: RedisCluster,
            systems: dict[str, Gateway], pools: dict[str, ClientPool],
            owners: dict[int, int]) -> None:
    """The trials, alternating single and cluster, then classic PUBLISH: into ``out``."""
    assert systems["single"].redis is not None
    pubs = {"single": Publisher(a.merchants, single_url=systems["single"].redis.url),
            "cluster": Publisher(a.merchants, owners=owners)}
    redis_pids = {"single": [systems["single"].redis_pid() or 0],
                  "cluster": [s.pid for s in cluster.servers.values() if s.pid]}
    order = [n for r in range(a.rounds)
             for n in (("single", "cluster") if r % 2 == 0 else ("cluster", "single"))]
    trials = []
    for name in order:
        first_cluster = name == "cluster" and "spublish" not in out
        before = reset_stats(cluster) if first_cluster else None
        row = measure(name, systems[name], pools[name], pubs[name], redis_pids[name], a)
        if before is not None:
            out["spublish"] = {"k": row["published"], "nodes": stats_delta(
                before, node_stats(cluster)), "sent_by_bench": {
                str(p): n for p, n in sorted(pubs["cluster"].sent_to.items())}}
        trials.append(row)
        print(f"  {name:<8} {row['delivered']}/{row['expected']} delivered, gateway "
              f"{row['us_per_delivery']:.2f} us/delivery", file=sys.stderr, flush=True)
    out["publish"] = classic_publish(cluster, a.classic_k or int(a.rate * a.duration),
                                     a.merchants)
    med = {n: statistics.median(t["us_per_delivery"] for t in trials if t["system"] == n)
           for n in ("single", "cluster")}
    out["cpu"] = {"trials": trials, "median_us_per_delivery": med,
                  "ratio": round(med["cluster"] / med["single"], 3) if med["single"] else None,
                  "all_delivered": all(t["delivered"] == t["expected"] for t in trials)}


def write_out(a: argparse.Namespace, out: dict) -> None:
    """The tables to stdout, the JSON to ``--json`` and, unless ``--docs ''``, the docs."""
    text = tables(out)
    print(text)
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nJSON: {path}")
    if a.docs:
        docs = Path(a.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "cluster.json").write_text(json.dumps(out, indent=1) + "\n")
        (docs / "cluster.md").write_text(markdown(out, text))
        print(f"docs: {docs / 'cluster.json'}, {docs / 'cluster.md'}")


if __name__ == "__main__":
    sys.exit(main())
