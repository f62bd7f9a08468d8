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
restart) is sent once more (`_resent`): the gateway's clients retry nothing by
themselves (a publish retried could run twice), and without this the first
read of every moved merchant after a failover, and of every pooled connection
after a restart, failed, costing its stream its snapshot or its replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxClientsReachedError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ..config import Config
from ..fanout.frames import event_frame
from ..runtime.supervision import stop_tasks
from .ids import (
    DurableEvent,
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

__all__ = ["DurableHistory", "publisher_settings"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_NOT_RESENT = (AuthenticationError, AuthorizationError, MaxClientsReachedError,
               MaxConnectionsError)

_LOST_MAX = 1000  # ids remembered per loss at most (a failover loses a few)


async def _resent(send: Callable[[], Awaitable[_T]]) -> _T:
    """`send()`, which only reads (or writes what it may write twice), sent once more
    when a Redis Cluster slot moved (MOVED: an aborted MULTI ran nothing, and the
    redirect taught the client the slot's owner) or on a connection error (a pooled
    connection Redis closed in a restart: the next try connects afresh; also a wait
    for a pooled connection that timed out, bounded by the caller's deadline). Not
    when a resend cannot help: ASK (a slot migrating: redis-py sends no ASKING before
    a MULTI), refused credentials or client limits, a socket timeout."""
    try:
        return await send()
    except _NOT_RESENT:
        raise
    except (MovedError, RedisConnectionError):
        return await send()


async def _in_multi(client: aioredis.Redis | Any, queue: Callable[[Any], object]) -> list[Any]:
    """The replies of the commands `queue` adds to a MULTI (`_resent`)."""
    async def multi() -> list[Any]:
        async with client.pipeline(transaction=True) as pipe:
            queue(pipe)
            return list(await pipe.execute())

    return await _resent(multi)


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
        (epoch, head), state = await _in_multi(
            self._client, lambda pipe: pipe.hmget(meta, "epoch", "offset").hgetall(state_key))
        if epoch is None or head is None:
            return None, []
        records = (JobRecord.parse(job, raw) for job, raw in state.items())
        return DurableId(_text(epoch), int(head)), [r for r in records if r is not None]

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

        (epoch, head), lost = await _resent(reads)
        if epoch is None or head is None:
            return HistoryHead(None)
        return HistoryHead(DurableId(_text(epoch), int(head)), lost_offsets(_text(epoch), lost))

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
            await _in_multi(self._client, lambda pipe: pipe.sadd(key, *ids).expire(key, ttl_s))
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

        (epoch, head), entries, lost = await _in_multi(self._client, queue)
        if epoch is None:  # no history (an orphaned stream is not part of any)
            return HistorySnapshot(None, 0, ())
        epoch = _text(epoch)
        return HistorySnapshot(
            epoch=epoch,
            head=int(head) if head is not None else 0,
            entries=tuple(_entry(epoch, raw_id, fields) for raw_id, fields in entries),
            lost=lost_offsets(epoch, lost),
        )


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _entry(epoch: str, raw_id: bytes | str, fields: dict[Any, Any]) -> DurableEvent:
    """A stream entry `0-OFFSET {e: event, d: payload}` of `epoch`."""
    offset = int(_text(raw_id).partition("-")[2])
    event = fields.get(b"e", fields.get("e", b""))
    payload = fields.get(b"d", fields.get("d", b""))
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return DurableEvent(DurableId(epoch, offset), _text(event), payload)


Claim = tuple[str, DurableId, str, bytes]
"""A message claiming a durable id: (merchant id, its id, event, payload)."""


async def holds_many(client: aioredis.Redis | Any, claims: Sequence[Claim]) -> list[bool]:
    """For each claim, whether the merchant's history has that event under that id (a
    message claiming an id may be a plain PUBLISH imitating the envelope), read in one
    MULTI (on Redis Cluster, where a MULTI stays in one slot, pass one claim at a time).

    An entry no longer kept (trimmed, or `sse.history: 0`) counts when the id is
    of the current epoch and not past its newest: no replay can start from it.
    """
    def queue(pipe: Any) -> None:
        for merchant_id, durable, _, _ in claims:
            stream, meta = history_keys(merchant_id)
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(stream, f"0-{durable.offset}", f"0-{durable.offset}")

    replies = await _in_multi(client, queue)
    return [_holds(durable, event, payload, *replies[2 * i: 2 * i + 2])
            for i, (_, durable, event, payload) in enumerate(claims)]


def _holds(durable: DurableId, event: str, payload: bytes, meta: list[Any],
           entries: list[Any]) -> bool:
    epoch, head = meta
    if epoch is None or _text(epoch) != durable.epoch or int(head or 0) < durable.offset:
        return False
    if not entries:
        return True
    found = _entry(durable.epoch, *entries[0])
    return found.event == event and found.payload == payload


async def first_lost(
    client: aioredis.Redis | Any, merchant_id: str, proven: Sequence[tuple[DurableId, bytes]]
) -> DurableId | None:
    """The oldest of `proven` (durable events this process delivered, of one epoch, each
    with its frame) that the history now holds as another event: a failover lost it and
    the new primary gave its id again. None when each is held as delivered, trimmed, not
    yet given again, or the history is of another epoch (no id of the old one comes again)."""
    epoch = proven[0][0].epoch
    offsets = [durable.offset for durable, _ in proven]
    stream, meta = history_keys(merchant_id)
    (held_epoch, _), entries = await _in_multi(client, lambda pipe: pipe.hmget(
        meta, "epoch", "offset").xrange(stream, f"0-{min(offsets)}", f"0-{max(offsets)}"))
    if held_epoch is None or _text(held_epoch) != epoch:
        return None
    held = {e.id.offset: e for e in (_entry(epoch, *raw) for raw in entries)}
    lost = [durable for durable, frame in proven
            if (e := held.get(durable.offset)) is not None
            and event_frame(str(durable), e.event, e.payload) != frame]
    return min(lost, key=lambda durable: durable.offset, default=None)


async def missed(
    client: aioredis.Redis | Any, merchant_id: str, expected: DurableId, durable: DurableId,
    events: Collection[str],
) -> bool:
    """Whether the history holds events of types in `events` from `expected` up to
    (not including) `durable`: a subscriber that was waiting for `expected` and got
    `durable` lost them. True when it cannot tell (entries trimmed, or another epoch)."""
    if durable.epoch != expected.epoch:
        return True
    if durable.offset <= expected.offset:
        return False
    stream = history_keys(merchant_id)[0]
    last = durable.offset - 1
    entries = await _resent(
        lambda: client.xrange(stream, f"0-{expected.offset}", f"0-{last}")) or []
    if len(entries) != last - expected.offset + 1:
        return True
    return any(_entry(durable.epoch, *raw).event in events for raw in entries)

