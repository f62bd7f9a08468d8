"""Redis CPU per published message on a local Redis Cluster beside a single Redis, one run.

Both are started here (``tools/cluster.py``: 3 primaries + 3 replicas; a plain
``RedisServer``), stopped by PID. Each channel has one subscribed connection
(a gateway process holding the merchant): ``SUBSCRIBE`` on the single Redis,
``SSUBSCRIBE`` on the primary owning the channel's slot on the cluster. Four
kinds, the same counts on both, alternating single/cluster each round:

- ``publish``: PUBLISH / SPUBLISH, one per round trip from 32 connections;
- ``publish_pipelined``: the same in pipelines of 500 (split per owning primary);
- ``durable`` / ``durable_pipelined``: ``gateway/durable/publish.lua`` through
  ``gateway.durable.publisher.AsyncPublisher`` (``send`` from 32 tasks /
  ``publish_many`` of 500), ``sharded=True`` with a ``RedisCluster`` client and
  hash-tagged keys and channels on the cluster.

CPU is utime+stime from /proc (``bench.procstat``) of the single server, of the
primaries, and of the replicas (separately), over the window until every
subscriber got every message, minus the idle rate measured before; divided by
the messages. ``python -m bench.redis_cluster_costs --merge FILE`` adds the
``redis_per_cluster_*`` costs to a unit-costs file (``bench.report.merge_cluster_costs``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from bench import procstat
from bench.report import cluster_table, merge_cluster_costs
from tools.cluster import RedisCluster, slot_of
from tools.services import HOST, RedisServer

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["COUNTS", "KINDS", "main", "measure_cluster"]

log = logging.getLogger(__name__)

KINDS = ("publish", "publish_pipelined", "durable", "durable_pipelined")
COUNTS = {"publish": 10_000, "publish_pipelined": 100_000, "durable": 5_000,
          "durable_pipelined": 15_000}
BATCH, CONCURRENCY, MARKER, IDLE_S = 500, 32, b'"jobId"', 3.0
BODY = b'{"jobId":"j%d","t":1764500000000000000,"seq":%d}'


def _resp(*args: str | bytes) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Sink(asyncio.Protocol):
    """A subscribed connection that reads and discards, counting messages (MARKER)."""

    def __init__(self, progress: asyncio.Event) -> None:
        self.count, self.tail, self.progress = 0, b"", progress
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data
        if not self.ready.done():
            if b"pong" in buf:  # the PING sent after the subscribes: all confirmed
                self.ready.set_result(True)
            buf = buf[-(len(MARKER) - 1):]
        self.count += buf.count(MARKER)
        self.tail = buf[-(len(MARKER) - 1):]
        self.progress.set()


class _Target:
    """A single Redis or the cluster: where each channel lives, its processes, its sinks."""

    def __init__(self, name: str, m: int, single: RedisServer | None = None,
                 cluster: RedisCluster | None = None) -> None:
        self.name, self.m, self.single, self.cluster = name, m, single, cluster
        tmpl = "merchant:{{{merchant_id}}}:{event}" if cluster else "merchant:{merchant_id}:{event}"
        self.channel_template = tmpl
        self.channels = {kind: [tmpl.format(merchant_id=f"{kind[0]}{i}", event="progress")
                                for i in range(m)] for kind in ("plain", "durable")}
        if cluster:
            prim = cluster.primaries()
            self.pids = [n.pid for n in prim if n.pid]
            self.replica_pids = [n.pid for n in cluster.nodes if n.role == "replica" and n.pid]
            self.owner = {ch: cluster.primary_for(slot_of(ch)).port
                          for chs in self.channels.values() for ch in chs}
        else:
            assert single is not None and single.pid is not None
            self.pids, self.replica_pids = [single.pid], []
            self.owner = {ch: single.port for chs in self.channels.values() for ch in chs}
        self.sinks: list[_Sink] = []
        self.progress = asyncio.Event()
        self.idle_rate = self.replica_idle_rate = 0.0

    async def setup(self) -> None:
        """Subscribe every channel (one connection per node), connect clients, load the script."""
        import redis.asyncio as aioredis
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        from gateway.durable.publisher import AsyncPublisher

        loop = asyncio.get_running_loop()
        by_port: dict[int, list[str]] = {}
        for ch, port in self.owner.items():
            by_port.setdefault(port, []).append(ch)
        for port, chans in by_port.items():
            transport, sink = await loop.create_connection(lambda: _Sink(self.progress),
                                                           HOST, port)
            cmds = ([_resp("SSUBSCRIBE", ch) for ch in chans] if self.cluster
                    else [_resp("SUBSCRIBE", *chans)])
            transport.write(b"".join(cmds) + _resp("PING"))
            self.sinks.append(sink)
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in self.sinks)), 10)
        self.clients = {p: aioredis.Redis(host=HOST, port=p) for p in set(self.owner.values())}
        self.durable_client = (AsyncRedisCluster(host=HOST, port=next(iter(self.clients)))
                               if self.cluster else next(iter(self.clients.values())))
        self.publisher = AsyncPublisher(self.durable_client, channel=self.channel_template,
                                        history=100, ttl_s=600, sharded=self.cluster is not None)
        # warm up: connections opened, script loaded, every history started (steady state)
        await self.publisher.publish_many([(f"d{i}", "progress", b'{"jobId":"w"}')
                                           for i in range(self.m)])
        await self._plain(2 * CONCURRENCY, 0, pipelined=False)
        await self.wait_delivered(self.m + 2 * CONCURRENCY)

    def _cpu(self) -> tuple[float, float, float]:
        return (procstat.cpu_seconds(self.pids), procstat.cpu_seconds(self.replica_pids),
                time.monotonic())

    def delivered(self) -> int:
        return sum(s.count for s in self.sinks)

    async def wait_delivered(self, total: int, limit_s: float = 15.0) -> bool:
        """Until the sinks counted ``total`` messages, at most ``limit_s``."""
        try:
            async with asyncio.timeout(limit_s):
                while self.delivered() < total:
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            pass
        return self.delivered() >= total

    async def _plain(self, n: int, k0: int, pipelined: bool) -> int:
        cmd, chans = ("SPUBLISH" if self.cluster else "PUBLISH"), self.channels["plain"]
        receivers = 0
        if pipelined:
            for a in range(k0, k0 + n, BATCH):
                pipes = {p: c.pipeline(transaction=False) for p, c in self.clients.items()}
                for k in range(a, min(k0 + n, a + BATCH)):
                    ch = chans[k % self.m]
                    pipes[self.owner[ch]].execute_command(cmd, ch, BODY % (k, k))
                for replies in await asyncio.gather(*(p.execute() for p in pipes.values())):
                    receivers += sum(replies)
            return receivers

        async def one(j: int) -> int:
            got = 0
            for k in range(k0 + j, k0 + n, CONCURRENCY):
                ch = chans[k % self.m]
                got += await self.clients[self.owner[ch]].execute_command(cmd, ch, BODY % (k, k))
            return got

        return sum(await asyncio.gather(*(one(j) for j in range(CONCURRENCY))))

    async def _durable(self, n: int, k0: int, pipelined: bool) -> None:
        items = [(f"d{k % self.m}", "progress", BODY % (k, k)) for k in range(k0, k0 + n)]
        if pipelined:
            for a in range(0, n, BATCH):
                await self.publisher.publish_many(items[a:a + BATCH])
            return

        async def one(j: int) -> None:
            for item in items[j::CONCURRENCY]:
                await self.publisher.send(item)

        await asyncio.gather(*(one(j) for j in range(CONCURRENCY)))

    async def window(self, kind: str, n: int, k0: int) -> dict:
        """Publish ``n`` messages of ``kind``; Redis CPU (us) per message, idle rate removed."""
        before = self.delivered()
        c0, r0, t0 = self._cpu()
        receivers = None
        if kind.startswith("publish"):
            receivers = await self._plain(n, k0, kind.endswith("pipelined"))
        else:
            await self._durable(n, k0, kind.endswith("pipelined"))
        ok = await self.wait_delivered(before + n)
        c1, r1, t1 = self._cpu()
        wall = t1 - t0
        return {"target": self.name, "kind": kind, "messages": n, "window_s": round(wall, 3),
                "cpu_s": round(c1 - c0, 3), "replica_cpu_s": round(r1 - r0, 3),
                "delivered": self.delivered() - before, "all_delivered": ok,
                "receivers": receivers,
                "us": round((c1 - c0 - self.idle_rate * wall) * 1e6 / n, 3),
                "replica_us": round((r1 - r0 - self.replica_idle_rate * wall) * 1e6 / n, 3)}

    async def close(self) -> None:
        for sink in self.sinks:
            sink.transport.close()
        for c in self.clients.values():
            await c.aclose()
        if self.cluster:
            await self.durable_client.aclose()


async def _run(targets: list[_Target], rounds: int, counts: dict[str, int],
               idle_s: float) -> list[dict]:
    for t in targets:
        await t.setup()
    before = [t._cpu() for t in targets]
    await asyncio.sleep(idle_s)  # the idle rate of every target, subtracted from each window
    for t, (c0, r0, t0) in zip(targets, before, strict=True):
        c1, r1, t1 = t._cpu()
        t.idle_rate, t.replica_idle_rate = (c1 - c0) / (t1 - t0), (r1 - r0) / (t1 - t0)
    trials, k0 = [], 10**6
    try:
        for r in range(rounds):
            for kind in KINDS:
                for t in (targets if r % 2 == 0 else targets[::-1]):
                    trials.append(await t.window(kind, counts[kind], k0))
                    k0 += counts[kind]
    finally:
        for t in targets:
            await t.close()
    return trials


def measure_cluster(merchants: int = 200, rounds: int = 2, scale: float = 1.0,
                    idle_s: float = IDLE_S) -> dict:
    """Start a single Redis and a 3+3 cluster, measure every kind on both, stop them."""
    counts = {k: max(CONCURRENCY, int(v * scale)) for k, v in COUNTS.items()}
    single, cluster, t_start = RedisServer(), RedisCluster(), time.monotonic()
    try:
        single.start()
        cluster.start()
        targets = [_Target("single", merchants, single=single),
                   _Target("cluster", merchants, cluster=cluster)]
        trials = asyncio.run(_run(targets, rounds, counts, idle_s))
    finally:
        cluster.stop()
        single.stop()
    out: dict = {"merchants": merchants, "rounds": rounds, "messages": counts,
                 "primaries": len(targets[1].pids), "replicas": len(targets[1].replica_pids),
                 "idle_us_per_s": {"single": round(targets[0].idle_rate * 1e6),
                                   "cluster": round(targets[1].idle_rate * 1e6),
                                   "cluster_replicas": round(targets[1].replica_idle_rate * 1e6)},
                 "all_delivered": all(t["all_delivered"] for t in trials)}
    for name, field in (("single", "us"), ("cluster", "us"), ("cluster_replicas", "replica_us")):
        tgt = name.split("_")[0]
        out[name] = {k: round(statistics.median(t[field] for t in trials
                                                if t["target"] == tgt and t["kind"] == k), 3)
                     for k in KINDS}
    out["ratio"] = {k: round(out["cluster"][k] / out["single"][k], 2) if out["single"][k] > 0
                    else None for k in KINDS}
    out["trials"] = trials
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_cluster_costs",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="windows per kind and target [2]")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the message counts [1]")
    p.add_argument("--out", default=str(ROOT / ".run" / "bench" / "redis-cluster-costs.json"))
    p.add_argument("--merge", action="append", default=[], metavar="UNIT_COSTS_JSON",
                   help="add the redis_per_cluster_* costs to this unit-costs file")
    a = p.parse_args(argv)
    args = sys.argv[1:] if argv is None else argv
    raw = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **measure_cluster(rounds=a.rounds, scale=a.scale)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1) + "\n")
    print(cluster_table(raw, KINDS))
    print(f"{raw['wall_s']} s; every message delivered: {raw['all_delivered']}; wrote {out}")
    command = "python -m bench.redis_cluster_costs " + " ".join(args)
    for path in a.merge:
        merge_cluster_costs(Path(path), raw, command.strip())
        print(f"merged into {path}")
    return 0 if raw["all_delivered"] else 1


if __name__ == "__main__":
    sys.exit(main())
