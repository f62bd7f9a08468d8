"""Durable history in Redis: publish through `publish.lua`, read for replay.

Per merchant, keys in one cluster slot (the merchant id is their hash tag):
the stream `gateway:history:{ID}` (entries `0-OFFSET` with fields `e` event
and `d` payload, capped at `sse.history`), the hash `gateway:meta:{ID}`
(`epoch`, `offset`), and the job state (jobs.py): the hash `gateway:jobs:{ID}`
and the sorted set `gateway:jobids:{ID}`. All expire `redis.history_ttl`
seconds after the merchant's last durable publish.

Reads take the meta hash and the stream in one MULTI/EXEC, so an entry and
the offset that counts it are always seen together; `durable.bridge` decides
whether the history still reaches a client's Last-Event-ID. A read that meets
a moved slot on Redis Cluster (MOVED) or a pooled connection Redis closed (a
restart) is sent once more (`redis_reads.resent`): the gateway's clients retry nothing by
themselves (a publish retried could run twice), and without this the first
read of every moved merchant after a failover, and of every pooled connection
after a restart, failed, costing its stream its snapshot or its replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from ..config import Config
from ..runtime.supervision import stop_tasks
from .ids import (
    DurableId,
    HistoryHead,
    HistorySnapshot,
    history_keys,
    job_state_keys,
    lost_ids_key,
    lost_offsets,
)
from .jobs import JobRecord
from .publisher import (
    DEFAULT_IDEMPOTENCY_TTL_S,
    DEFAULT_JOB_KEY,
    DEFAULT_JOBS_KEPT,
    AsyncPublisher,
    Item,
    Outcome,
)
from .redis_reads import in_multi, resent, stream_entry, text

__all__ = ["DurableHistory", "publisher_settings"]

log = logging.getLogger(__name__)
_LOST_MAX = 1000  # ids remembered per loss at most (a failover loses a few)


def publisher_settings(cfg: Config) -> dict[str, Any]:
    """The config values every durable publisher passes (`DurableHistory`, `Publisher`)."""
    return {
        "channel": cfg.redis.channel,
        "history": cfg.sse.history,
        "ttl_s": cfg.redis.history_ttl,
        "sharded": cfg.redis.cluster,
        "job_key": cfg.sse.job_key,
        "jobs_kept": cfg.sse.snapshot_jobs,
        "idempotency_ttl_s": cfg.redis.idempotency_ttl,
    }


class DurableHistory:
    """Durable histories over a `redis.asyncio.Redis` or `RedisCluster` client that
    returns bytes (no `decode_responses`); `close()` closes that client."""

    def __init__(
        self,
        client: aioredis.Redis | Any,
        *,
        channel: str,
        history: int,
        ttl_s: int,
        sharded: bool = False,
        job_key: str = DEFAULT_JOB_KEY,
        jobs_kept: int = DEFAULT_JOBS_KEPT,
        idempotency_ttl_s: int = DEFAULT_IDEMPOTENCY_TTL_S,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._recording: set[asyncio.Task[None]] = set()
        self._publisher = AsyncPublisher(
            client, channel=channel, history=history, ttl_s=ttl_s, sharded=sharded,
            job_key=job_key, jobs_kept=jobs_kept, idempotency_ttl_s=idempotency_ttl_s,
        )

    async def close(self) -> None:
        await stop_tasks(list(self._recording))
        if isinstance(self._client, RedisCluster):
            await self._client.aclose()
        else:
            await self._client.aclose(close_connection_pool=True)

    async def publish(self, merchant_id: str, event: str, payload: bytes) -> str | None:
        """Record and publish one event; its durable id (None when stale)."""
        return (await self._publisher.send((merchant_id, event, payload))).id

    async def publish_many(self, items: Sequence[Item]) -> list[Outcome]:
        """Record and publish items in order; what each did (`AsyncPublisher.publish_many`)."""
        return await self._publisher.publish_many(items)

    async def read_jobs(self, merchant_id: str) -> tuple[DurableId | None, list[JobRecord]]:
        """The merchant's newest durable id and job state, read atomically."""
        meta, state_key = history_keys(merchant_id)[1], job_state_keys(merchant_id)[0]
        (epoch, head), state = await in_multi(
            self._client, lambda pipe: pipe.hmget(meta, "epoch", "offset").hgetall(state_key))
        if epoch is None or head is None:
            return None, []
        records = (JobRecord.parse(job, raw) for job, raw in state.items())
        return DurableId(text(epoch), int(head)), [r for r in records if r is not None]

    async def read_head(self, merchant_id: str) -> HistoryHead:
        """The id of the merchant's newest durable event (None when it has no history)
        and the ids of its epoch a failover lost: two reads in one round trip (no
        MULTI: the set only grows, and an id recorded between them is as recorded a
        moment later)."""
        async def reads() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(history_keys(merchant_id)[1], "epoch", "offset")
                pipe.smembers(lost_ids_key(merchant_id))
                return list(await pipe.execute())

        (epoch, head), lost = await resent(reads)
        if epoch is None or head is None:
            return HistoryHead(None)
        return HistoryHead(DurableId(text(epoch), int(head)), lost_offsets(text(epoch), lost))

    def remember_lost(self, merchant_id: str, first: DurableId, last: DurableId) -> None:
        """Record, in the background, that the events this process had under the ids
        `first`..`last` (one epoch) were lost in a failover and the ids went to other
        events: a tab resuming from one of them, on any process, gets `resync`."""
        task = asyncio.create_task(self._record_lost(merchant_id, first, last))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_lost(self, merchant_id: str, first: DurableId, last: DurableId) -> None:
        offsets = range(first.offset, min(last.offset, first.offset + _LOST_MAX - 1) + 1)
        key = lost_ids_key(merchant_id)
        try:
            ids = [f"{first.epoch}:{offset}" for offset in offsets]
            ttl_s = self._ttl_s  # kept as long as the history
            await in_multi(self._client, lambda pipe: pipe.sadd(key, *ids).expire(key, ttl_s))
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("lost ids not recorded merchant=%s ids=%s..%s: %s", merchant_id,
                        first, last, type(exc).__name__)

    async def read_all(self, merchant_id: str) -> HistorySnapshot:
        """The merchant's whole history, read atomically; `HistorySnapshot.after(last)`
        bridges it to a client's Last-Event-ID (one read serves many replays)."""
        stream, meta = history_keys(merchant_id)
        lost_key = lost_ids_key(merchant_id)

        def queue(pipe: Any) -> None:
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(stream, "-", "+")
            pipe.smembers(lost_key)

        (epoch, head), entries, lost = await in_multi(self._client, queue)
        if epoch is None:  # no history (an orphaned stream is not part of any)
            return HistorySnapshot(None, 0, ())
        epoch = text(epoch)
        return HistorySnapshot(
            epoch=epoch,
            head=int(head) if head is not None else 0,
            entries=tuple(stream_entry(epoch, raw_id, fields) for raw_id, fields in entries),
            lost=lost_offsets(epoch, lost),
        )
