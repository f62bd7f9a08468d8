"""The durable reads' plumbing: one resend on a moved slot or a closed connection, a
MULTI's replies, and a history stream entry decoded (history.py, history_checks.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxClientsReachedError,
    MaxConnectionsError,
    MovedError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from .ids import DurableEvent, DurableId

__all__ = ["in_multi", "resent", "stream_entry", "text"]

_T = TypeVar("_T")
_NOT_RESENT = (AuthenticationError, AuthorizationError, MaxClientsReachedError,
               MaxConnectionsError)


async def resent(send: Callable[[], Awaitable[_T]]) -> _T:
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


async def in_multi(client: aioredis.Redis | Any, queue: Callable[[Any], object]) -> list[Any]:
    """The replies of the commands `queue` adds to a MULTI (`resent`)."""
    async def multi() -> list[Any]:
        async with client.pipeline(transaction=True) as pipe:
            queue(pipe)
            return list(await pipe.execute())

    return await resent(multi)


def text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def stream_entry(epoch: str, raw_id: bytes | str, fields: dict[Any, Any]) -> DurableEvent:
    """A stream entry `0-OFFSET {e: event, d: payload}` of `epoch`."""
    offset = int(text(raw_id).partition("-")[2])
    event = fields.get(b"e", fields.get("e", b""))
    payload = fields.get(b"d", fields.get("d", b""))
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return DurableEvent(DurableId(epoch, offset), text(event), payload)
