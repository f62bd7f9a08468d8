"""Durable history in Redis: publish through `publish.lua`, read for replay.

Per merchant, two keys in one cluster slot (the merchant id is their hash
tag): the stream `gateway:history:{ID}` (entries `0-OFFSET` with fields `e`
event and `d` payload, capped at `sse.history`) and the hash
`gateway:meta:{ID}` (`epoch`, `offset`). Both expire `redis.history_ttl`
seconds after the merchant's last durable publish.

Reads take the meta hash and the stream in one MULTI/EXEC, so an entry and
the offset that counts it are always seen together; `durable.bridge` decides
whether the history still reaches a client's Last-Event-ID.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .ids import DurableEvent, DurableId, HistorySnapshot, history_keys
from .publisher import AsyncPublisher

__all__ = ["DurableHistory"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self._client = client
        self._publisher = AsyncPublisher(
            client, channel=channel, history=history, ttl_s=ttl_s, sharded=sharded
        )

    async def close(self) -> None:
        if isinstance(self._client, RedisCluster):
            await self._client.aclose()
        else:
            await self._client.aclose(close_connection_pool=True)

    async def publish(self, merchant_id: str, event: str, payload: bytes) -> str:
        """Record and publish one event; its durable id."""
        return await self._publisher.publish_payload(merchant_id, event, payload)

    async def publish_many(self, items: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Record and publish (merchant_id, event, payload) items in order; their ids."""
        return await self._publisher.publish_many(items)

    async def read_head(self, merchant_id: str) -> DurableId | None:
        """The id of the merchant's newest durable event, None when it has no history."""
        epoch, head = await self._client.hmget(history_keys(merchant_id)[1], "epoch", "offset")
        if epoch is None or head is None:
            return None
        return DurableId(_text(epoch), int(head))

    async def read_all(self, merchant_id: str) -> HistorySnapshot:
        """The merchant's whole history, read atomically; `HistorySnapshot.after(last)`
        bridges it to a client's Last-Event-ID (one read serves many replays)."""
        stream, meta = history_keys(merchant_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, "epoch", "offset")
            pipe.xrange(stream, "-", "+")
            (epoch, head), entries = await pipe.execute()
        if epoch is None:  # no history (an orphaned stream is not part of any)
            return HistorySnapshot(None, 0, ())
        epoch = _text(epoch)
        return HistorySnapshot(
            epoch=epoch,
            head=int(head) if head is not None else 0,
            entries=tuple(_entry(epoch, raw_id, fields) for raw_id, fields in entries),
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


async def holds(
    client: aioredis.Redis | Any, merchant_id: str, durable: DurableId, event: str, payload: bytes
) -> bool:
    """Whether the merchant's history has this event under `durable` (a message
    claiming that id may be a plain PUBLISH imitating the envelope).

    An entry no longer kept (trimmed, or `sse.history: 0`) counts when the id is
    of the current epoch and not past its newest: no replay can start from it.
    """
    stream, meta = history_keys(merchant_id)
    entry_id = f"0-{durable.offset}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.hmget(meta, "epoch", "offset")
        pipe.xrange(stream, entry_id, entry_id)
        (epoch, head), entries = await pipe.execute()
    if epoch is None or _text(epoch) != durable.epoch or int(head or 0) < durable.offset:
        return False
    if not entries:
        return True
    found = _entry(durable.epoch, *entries[0])
    return found.event == event and found.payload == payload
