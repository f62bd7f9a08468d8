"""One chaos run: start the processes, run clients, publishers and faults for the
duration, let the run go quiet, check, stop everything by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.durable.ids import history_keys

from .checker import Settings, check, not_converged
from .clients import BrowserClient, Steering
from .faults import FaultRunner
from .inputs import Inputs
from .knowledge import Held, Kind, ident_of, job_of
from .losses import Loss
from .publishers import CHANNEL, CLUSTER_CHANNEL, Publisher, helper_for, redis_client
from .records import Fault, Published, durable_id
from .report import Result
from .schedule import Plan, make_plan
from .storms import BurstPublisher, StormRecord, StormRunner
from .topology import HISTORY, HISTORY_TTL, Topology

__all__ = ["run"]

Offset = tuple[str, int]
_QUIET_S = 20.0  # at most this long for every client to hold its merchant's last event
_TAP_EVERY_S = 0.25  # how often the history tap reads what each history gained


def _small_socket(addr: Any) -> socket.socket:
    """Client sockets with a small receive buffer: a tab that stops reading soon fills
    the gateway's queue (coalescing, slow-client cuts) as a slow link would."""
    family, kind, proto = addr[0], addr[1], addr[2]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return sock


async def run(seed: int, duration: float, profile: str, clients: int, run_dir: Path,
              herd: str = "same", burst_max: int = 200) -> Result:
    plan = make_plan(seed, duration, profile, clients, herd, burst_max)
    topo = Topology(profile, plan.merchants, run_dir, plan.lag_ms)
    started = time.monotonic()
    await asyncio.to_thread(topo.start)
    try:
        result = await _load(plan, topo)
    finally:
        await asyncio.to_thread(topo.stop)
    result.wall_s = time.monotonic() - started
    return result


async def _load(plan: Plan, topo: Topology) -> Result:
    cluster = plan.profile == "cluster"
    # slow tabs read through small socket buffers (the gateway's queue fills as over a
    # slow link); the others keep up with a storm's bursts
    connector = aiohttp.TCPConnector(limit=0, force_close=True, socket_factory=_small_socket)
    slow = aiohttp.ClientSession(connector=connector, read_bufsize=16384, auto_decompress=False)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 auto_decompress=False)
    redis = redis_client(topo.redis_url, cluster)  # reads (tap, final history), markers
    writer = redis_client(topo.redis_url, cluster, at_most_once=True)  # publishers
    final, done, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    published: list[Published] = []
    faults: list[Fault] = []
    storms: list[StormRecord] = []
    steering, lock = Steering(), asyncio.Lock()
    try:
        tabs = [BrowserClient(c, slow if c.slow else http, topo.entries, topo.path, final, done,
                              steering) for c in plan.clients]
        tab_tasks = [asyncio.create_task(t.run()) for t in tabs]
        t0 = time.monotonic()
        pubs = [Publisher(p, published, http, topo.publish_urls, topo.path, topo.key, writer,
                          cluster, HISTORY) for p in plan.publishers]
        tasks = [asyncio.create_task(p.run(stop)) for p in pubs]
        tasks.append(asyncio.create_task(
            FaultRunner(topo, plan.faults, t0, faults, lock).run(stop)))
        bursts = BurstPublisher(published, http, topo.entries, topo.path, topo.key, writer,
                                cluster, HISTORY)
        seen: dict[str, dict[Offset, set[Kind]]] = {}
        tap = asyncio.create_task(_tap(plan, redis, seen, stop))
        tasks.append(asyncio.create_task(StormRunner(
            plan.storms, tabs, steering, topo.lag, plan.lag_ms / 1000, bursts, storms, lock,
            t0).run(stop)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), plan.duration)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 180)  # a fault in progress completes
        final.set()
        markers_from = time.monotonic()
        heads = await _markers(plan, redis, cluster, published)
        laggards = await _quiet(tabs, heads, markers_from)
        quiet_at = time.monotonic()
        done.set()
        logs = await asyncio.wait_for(asyncio.gather(*tab_tasks), 30)
        history = await _history(plan, redis)
        tap.cancel()
        await asyncio.gather(tap, return_exceptions=True)
    finally:
        done.set()
        await http.close()
        await slow.close()
        await redis.aclose()
        await writer.aclose()
    losses: list[Loss] = []
    settings = Settings(history=HISTORY, history_ttl=HISTORY_TTL)
    anomalies = check(logs, published, faults, heads, settings, history, losses, seen)
    anomalies += not_converged(laggards, quiet_at)
    inputs = Inputs(logs, published, faults, heads, settings, history, seen, t0, laggards,
                    quiet_at)
    return Result(plan.seed, plan.profile, plan.duration, logs, published, faults, anomalies,
                  t0, converged=not laggards, storms=storms, herd=plan.herd, losses=losses,
                  burst_max=plan.burst_max, inputs=inputs)


async def _markers(plan: Plan, redis: Any, cluster: bool,
                   published: list[Published]) -> dict[str, Offset | None]:
    """One last durable event per merchant, once all is quiet: every open tab must get it."""
    channel = CLUSTER_CHANNEL if cluster else CHANNEL
    helper = helper_for(redis, channel, HISTORY, cluster)
    heads: dict[str, Offset | None] = {}
    for n, merchant in enumerate(plan.merchants):
        record = Published("marker", n, merchant, "stage", None, True, time.monotonic())
        published.append(record)
        deadline = time.monotonic() + 30
        while record.id is None:
            try:
                record.id = await helper.publish(merchant, "stage", {"marker": True, "seq": n})
            except Exception:  # Redis still coming back (a cluster re-electing): retry
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        record.acked = time.monotonic()
        heads[merchant] = durable_id(record.id)
    return heads


async def _quiet(tabs: list[BrowserClient], heads: dict[str, Offset | None],
                 markers_from: float, wait_s: float = _QUIET_S) -> list[str]:
    """Wait (bounded) until every tab's last durable id is its merchant's head; the tabs
    whose is not when the wait runs out (none: converged). A tab told `resync` since
    the markers began (`markers_from`) is not behind: it may have reconnected just
    after its merchant's marker, and a resync is the promise's other answer (its
    frames are checked like any others)."""
    want = {m: f"{h[0]}:{h[1]}" for m, h in heads.items() if h is not None}
    deadline = time.monotonic() + wait_s
    while True:
        behind = [t.plan.name for t in tabs if t.last_durable != want.get(t.plan.merchant)
                  and t.resynced_at < markers_from]
        if not behind or time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.1)


async def _tap(plan: Plan, redis: Any, seen: dict[str, dict[Offset, set[Kind]]],
               stop: asyncio.Event) -> None:
    """Note the kind (event, job) of every entry each merchant's history gains while the
    run goes on: the checker's only source for an event whose publish was never
    acknowledged (Redis unreachable meanwhile), that no tab received (every replay
    coalesced it) and that the final history no longer holds (trimmed). Each tick reads
    what follows the newest offset seen (all again when the head went back or the epoch
    changed); a read a fault fails waits for the next tick; entries trimmed meanwhile
    stay unknown."""
    last: dict[str, tuple[str, int]] = {}  # merchant -> (epoch, newest offset read)
    while not stop.is_set():
        for merchant in plan.merchants:
            stream, meta = history_keys(merchant)
            try:
                raw_epoch, raw_head = await redis.hmget(meta, "epoch", "offset")
                if raw_epoch is None or raw_head is None:
                    continue
                epoch, head = raw_epoch.decode(), int(raw_head)
                known = last.get(merchant)
                after = known[1] if known and known[0] == epoch and known[1] <= head else 0
                entries = await redis.xrange(stream, f"0-{after + 1}", "+") if head > after \
                    else []
            except Exception:  # a fault under way: the next tick
                continue
            kinds = seen.setdefault(merchant, {})
            for raw_id, fields in entries:
                offset = int(raw_id.decode().partition("-")[2])
                try:
                    data = json.loads(fields.get(b"d", b""))
                except ValueError:
                    data = None
                kinds.setdefault((epoch, offset), set()).add(
                    (fields.get(b"e", b"").decode(), job_of(data)))
                after = max(after, offset)
            last[merchant] = (epoch, after)
        await asyncio.sleep(_TAP_EVERY_S)


async def _history(plan: Plan, redis: Any) -> dict[str, dict[Offset, Held]]:
    """What Redis' durable history still holds, by offset, per merchant."""
    out: dict[str, dict[Offset, Held]] = {}
    for merchant in plan.merchants:
        stream, meta = history_keys(merchant)
        epoch = await redis.hget(meta, "epoch")
        if epoch is None:
            continue
        epoch = epoch.decode()
        entries = {}
        for raw_id, fields in await redis.xrange(stream, "-", "+"):
            offset = int(raw_id.decode().partition("-")[2])
            try:
                data = json.loads(fields.get(b"d", b""))
            except ValueError:
                data = None
            entries[(epoch, offset)] = Held(fields.get(b"e", b"").decode(), job_of(data),
                                            ident_of(data))
        out[merchant] = entries
    return out
