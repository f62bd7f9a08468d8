"""Redis-side unit costs on a throwaway Redis: plain PUBLISH, durable publish, history reads.

- PUBLISH with 1 and with 3 subscribed connections (a gateway process each):
  Redis CPU per message, so the model can charge per subscribing process.
- Durable publish: ``gateway/broker/publish.lua`` run by the gateway's own
  ``AsyncPublisher.publish_many`` (XADD + HINCRBY + EXPIREs + PUBLISH).
- History read: ``DurableHistory.read_all`` (the whole capped history, as a
  gateway's replay reads it) bridged to a Last-Event-ID K events back; Redis
  CPU per event read and the reader's (the gateway's) CPU per replayed event.
- Redis Cluster: ``bench/redis_cluster_costs.py`` (SPUBLISH and sharded
  publish.lua on a local 3+3 cluster beside a single Redis, the same run), under
  ``"cluster"``.

Skipped, with the reason recorded, when the durable modules are absent.
"""

from __future__ import annotations

import asyncio
import resource
import time

from bench import procstat
from tools.services import RedisServer

__all__ = ["command_calls", "measure_cluster_or_skip", "measure_redis"]

BATCH = 500
CONCURRENCY = 32


def command_calls(url: str, *commands: str) -> int:
    """Calls Redis at ``url`` has served of ``commands`` (``INFO commandstats``)."""
    import redis as sync_redis

    from bench.cluster_report import cmdstat

    r = sync_redis.Redis.from_url(url)
    try:
        stats = r.info("commandstats")
        return sum(cmdstat(stats, command)[0] for command in commands)
    finally:
        r.close()


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _drain(ps, stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is not None:
            counter[0] += 1


async def _publish_cost(r, pid: int, merchants: int, count: int, subscribers: int,
                        pipelined: bool = True) -> float:
    """Redis CPU us per PUBLISH with ``subscribers`` connections on every channel."""
    channels = [f"merchant:m{i}:progress" for i in range(merchants)]
    subs, tasks, stop, got = [], [], asyncio.Event(), [0]
    for _ in range(subscribers):
        ps = r.pubsub()
        await ps.subscribe(*channels)
        subs.append(ps)
        tasks.append(asyncio.create_task(_drain(ps, stop, got)))
    await asyncio.sleep(0.3)
    body = b'{"jobId":"j%d","t":1764500000000000000,"seq":%d}'
    c0 = procstat.cpu_seconds([pid])
    if pipelined:
        for a in range(0, count, BATCH):
            pipe = r.pipeline(transaction=False)
            for k in range(a, min(count, a + BATCH)):
                pipe.publish(channels[k % merchants], body % (k, k))
            await pipe.execute()
    else:  # one round trip per message, from CONCURRENCY connections (a backend's view)

        async def one(j: int) -> None:
            for k in range(j, count, CONCURRENCY):
                await r.publish(channels[k % merchants], body % (k, k))

        await asyncio.gather(*(one(j) for j in range(CONCURRENCY)))
    cost = (procstat.cpu_seconds([pid]) - c0) * 1e6 / count
    for _ in range(200):  # bounded: let the subscribers read what was sent
        if got[0] >= count * subscribers:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    for ps in subs:
        await ps.aclose()
    return cost


async def _durable_costs(r, pid: int, merchants: int, count: int, replay: int,
                         rounds: int = 10) -> dict:
    from gateway.durable.history import DurableHistory
    from gateway.durable.ids import DurableId

    hist = DurableHistory(r, channel="merchant:{merchant_id}:{event}", history=100, ttl_s=600)
    ids = [f"d{i}" for i in range(merchants)]
    ps = r.pubsub()  # one subscribed connection, as for plain PUBLISH's figure
    await ps.subscribe(*(f"merchant:{mid}:progress" for mid in ids))
    stop, got = asyncio.Event(), [0]
    drain = asyncio.create_task(_drain(ps, stop, got))
    await asyncio.sleep(0.3)
    c0 = procstat.cpu_seconds([pid])
    last: dict[str, str] = {}
    for a in range(0, count, BATCH):
        items = [(ids[k % merchants], "progress", b'{"jobId":"j%d","seq":%d}' % (k, k))
                 for k in range(a, min(count, a + BATCH))]
        for (mid, _, _), done in zip(items, await hist.publish_many(items), strict=True):
            if done.id is not None:
                last[mid] = done.id
    pub = (procstat.cpu_seconds([pid]) - c0) * 1e6 / count
    starts = []
    for mid, eid in last.items():
        head = DurableId.parse(eid)
        assert head is not None
        starts.append((mid, DurableId(head.epoch, max(0, head.offset - replay))))
    c0, s0 = procstat.cpu_seconds([pid]), _self_cpu()
    events = replayed = 0
    for _ in range(rounds):
        for mid, since in starts:
            snapshot = await hist.read_all(mid)
            events += len(snapshot.entries)  # what Redis read and sent
            replayed += len(snapshot.after(since) or [])
    replay_redis = (procstat.cpu_seconds([pid]) - c0) * 1e6 / max(events, 1)
    replay_reader = (_self_cpu() - s0) * 1e6 / max(replayed, 1)
    singles = count // 5
    c0 = procstat.cpu_seconds([pid])

    async def one(j: int) -> None:
        for k in range(j, singles, CONCURRENCY):
            await hist.publish(ids[k % merchants], "progress", b'{"jobId":"x%d"}' % k)

    await asyncio.gather(*(one(j) for j in range(CONCURRENCY)))
    single = (procstat.cpu_seconds([pid]) - c0) * 1e6 / (singles)
    stop.set()
    await drain
    await ps.aclose()
    return {
        "durable_publish_us": round(pub, 2),
        "durable_publish_us_unpipelined": round(single, 2),
        "replay_events": replayed,
        "history_events_read": events,
        "replay_redis_us_per_event": round(replay_redis, 3),
        "replay_reader_us_per_event": round(replay_reader, 3),
    }


async def _run(url: str, pid: int, merchants: int, count: int, replay: int) -> dict:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    out: dict = {"messages": count, "merchants": merchants}
    try:
        out["publish_us_1sub"] = round(await _publish_cost(r, pid, merchants, count, 1), 3)
        out["publish_us_3sub"] = round(await _publish_cost(r, pid, merchants, count, 3), 3)
        out["publish_us_1sub_unpipelined"] = round(
            await _publish_cost(r, pid, merchants, count // 10, 1, pipelined=False), 3)
        try:
            out.update(await _durable_costs(r, pid, merchants, count // 3, replay))
        except ImportError as e:
            out["durable_skipped"] = f"durable modules absent: {e}"
    finally:
        await r.aclose()
    return out


def measure_redis(merchants: int = 200, count: int = 100_000, replay: int = 50,
                  cluster: bool = True, cluster_scale: float = 1.0) -> dict:
    """Start a Redis, measure, stop it (by PID); then, unless ``cluster`` is false, the same
    on a local Redis Cluster (``cluster_scale`` multiplies its message counts)."""
    server = RedisServer()
    server.start()
    try:
        assert server.pid is not None
        t0 = time.monotonic()
        out = asyncio.run(_run(server.url, server.pid, merchants, count, replay))
        out["wall_s"] = round(time.monotonic() - t0, 2)
    finally:
        server.stop()
    out["cluster"] = (measure_cluster_or_skip(cluster_scale) if cluster
                      else {"skipped": "not asked for"})
    return out


def measure_cluster_or_skip(scale: float = 1.0) -> dict:
    """``bench.redis_cluster_costs`` (a 3+3 cluster beside a single Redis, ~25 s), or why not."""
    from bench.redis_cluster_costs import measure_cluster
    from tools.services import ServiceError

    try:
        return measure_cluster(scale=scale)
    except (ServiceError, ImportError) as e:
        return {"skipped": f"no local Redis Cluster: {e}"}


if __name__ == "__main__":
    import json

    print(json.dumps(measure_redis(), indent=1))
