"""Durable publishing for Python backends, on redis-py (see docs/publishing.md).

    from redis import Redis
    from gateway.durable.publisher import Publisher

    publisher = Publisher(Redis.from_url("redis://localhost:6379/0"))
    event_id = publisher.publish("m1", "progress", {"jobId": "po-42", "percent": 40})

`AsyncPublisher` does the same on `redis.asyncio.Redis`. Both run the script
the gateway ships, `gateway/durable/publish.lua`, with EVALSHA (EVAL when the
server does not hold it yet). Pass the gateway's `redis.channel`,
`sse.history`, `redis.history_ttl` and `redis.cluster` when they differ from
the defaults.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .ids import encode_data, script_args

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_HISTORY",
    "DEFAULT_TTL_S",
    "SCRIPT",
    "SCRIPT_PATH",
    "SCRIPT_SHA",
    "AsyncPublisher",
    "PartialPublish",
    "Publisher",
]

log = logging.getLogger(__name__)

SCRIPT_PATH = Path(__file__).resolve().parent / "publish.lua"
SCRIPT = SCRIPT_PATH.read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()

DEFAULT_CHANNEL = "merchant:{merchant_id}:{event}"
DEFAULT_HISTORY = 100
DEFAULT_TTL_S = 86400

Item = tuple[str, str, bytes]


class _Settings:
    """What every publish passes besides the event: the gateway's config values."""

    def __init__(self, channel: str, history: int, ttl_s: int, sharded: bool) -> None:
        if history < 0 or ttl_s < 1:
            raise ValueError("history must be >= 0 and ttl_s >= 1")
        self.channel = channel
        self.history = history
        self.ttl_s = ttl_s
        self.sharded = sharded

    def call(self, item: Item) -> list[Any]:
        """[numkeys, *KEYS, *ARGV] of one script run."""
        merchant_id, event, payload = item
        keys, argv = script_args(
            self.channel, merchant_id, event, payload,
            history=self.history, ttl_s=self.ttl_s, sharded=self.sharded,
        )
        return [len(keys), *keys, *argv]


class PartialPublish(ResponseError):
    """Redis refused some items of a batch; the others were published.

    `ids` holds each item's id, None where it was refused; the refusal of the
    first refused item is the cause (`__cause__`) and its text the message.
    """

    def __init__(self, ids: list[str | None], error: ResponseError) -> None:
        super().__init__(str(error))
        self.ids = ids
        self.error = error
        self.__cause__ = error


def _text(reply: Any) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)


class _Publisher:
    """The client and the gateway's config values every publish passes to the script."""

    def __init__(
        self,
        client: Any,  # redis.Redis or RedisCluster; their asyncio twins for AsyncPublisher
        *,
        channel: str = DEFAULT_CHANNEL,
        history: int = DEFAULT_HISTORY,
        ttl_s: int = DEFAULT_TTL_S,
        sharded: bool = False,
    ) -> None:
        self._client = client
        self._settings = _Settings(channel, history, ttl_s, sharded)


class Publisher(_Publisher):
    """Durable publish over a synchronous `redis.Redis` (or `RedisCluster`) client."""

    def publish(self, merchant_id: str, event: str, data: Any) -> str:
        """Record and publish `data` (a string as text, else compact JSON); its id."""
        return self.publish_payload(merchant_id, event, encode_data(data))

    def publish_payload(self, merchant_id: str, event: str, payload: bytes) -> str:
        """Like `publish` with the payload bytes given as they are."""
        call = self._settings.call((merchant_id, event, payload))
        try:
            reply = self._client.evalsha(SCRIPT_SHA, *call)
        except NoScriptError:
            reply = self._client.eval(SCRIPT, *call)
        return _text(reply)


class AsyncPublisher(_Publisher):
    """Durable publish over `redis.asyncio.Redis`; also the gateway's own publisher."""

    async def publish(self, merchant_id: str, event: str, data: Any) -> str:
        """Record and publish `data` (a string as text, else compact JSON); its id."""
        return await self.publish_payload(merchant_id, event, encode_data(data))

    async def publish_payload(self, merchant_id: str, event: str, payload: bytes) -> str:
        """Like `publish` with the payload bytes given as they are."""
        call = self._settings.call((merchant_id, event, payload))
        try:
            reply = await self._client.evalsha(SCRIPT_SHA, *call)
        except NoScriptError:
            reply = await self._client.eval(SCRIPT, *call)
        return _text(reply)

    async def publish_many(self, items: Sequence[Item]) -> list[str]:
        """Publish (merchant_id, event, payload) items in order over one pipeline.

        Not a transaction: when Redis refuses some items (an error reply: out of
        memory, a key of the wrong type) the others are still published, and
        `PartialPublish` carries each item's id or None. A run that met NOSCRIPT
        (the script cache was flushed) is sent again once with the script itself
        (EVAL), so a flush racing the retry cannot fail it. A connection fault is
        raised as it is: then what was published is unknown.
        """
        calls = [self._settings.call(item) for item in items]
        replies = await self._pipeline(calls, range(len(calls)), "EVALSHA")
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            for i, reply in zip(missing, await self._pipeline(calls, missing, "EVAL"), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
                raise reply  # a connection fault: the outcome of every item is unknown
        ids = [None if isinstance(r, Exception) else _text(r) for r in replies]
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if errors:
            raise PartialPublish(ids, errors[0])
        return [i for i in ids if i is not None]

    async def _pipeline(
        self, calls: list[list[Any]], indexes: Sequence[int], command: str
    ) -> list[Any]:
        script = SCRIPT_SHA if command == "EVALSHA" else SCRIPT
        async with self._client.pipeline(transaction=False) as pipe:
            for i in indexes:
                pipe.execute_command(command, script, *calls[i])  # cluster blocks .evalsha
            return list(await pipe.execute(raise_on_error=False))
