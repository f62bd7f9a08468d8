"""The delivery canary: a round trip through Redis on the subscriber's own connection.

A token published on a private control channel must come back through the
subscriber's reader; `/health` runs one per request, and `watch` one per
second, cutting the subscriber connection when it stops coming back (a frozen
Redis can keep its socket open while delivering nothing).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from .. import patience
from ..sharing import SharedRuns
from .connection import FAULTS

__all__ = ["Canary"]

log = logging.getLogger(__name__)

_EVERY_S = 1.0
TIMEOUT_S = 1.5


class Canary:
    def __init__(self, client: aioredis.Redis, channel: bytes, *, sharded: bool = False) -> None:
        self._client = client
        self.channel = channel
        self._publish = "SPUBLISH" if sharded else "PUBLISH"
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self.last_round_trip_s: float | None = None
        self.ok = False
        self._flushes: SharedRuns[None, float] = SharedRuns(lambda _: self.round_trip())

    async def round_trip(self) -> float:
        """Publish a token on the control channel, await it on the subscriber; milliseconds."""
        token = str(next(self._ids)).encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        started = time.perf_counter()

        async def publish_and_receive() -> None:
            await self._client.execute_command(self._publish, self.channel, token)
            await future

        try:  # a loop congested by a storm is not mistaken for a frozen Redis
            await patience.wait(asyncio.ensure_future(publish_and_receive()), TIMEOUT_S)
        finally:
            self._waiting.pop(token, None)
        elapsed = time.perf_counter() - started
        self.last_round_trip_s = elapsed
        return elapsed * 1000

    async def flush(self) -> float:
        """A round trip that starts after this call: every message published before
        the call has then come through. Callers arriving while one is in flight share
        the next, so a storm of replays costs a few round trips, not one each (and
        never starves the watch's own round trip of the publishing connection)."""
        return await self._flushes(None)

    def received(self, token: bytes) -> None:
        future = self._waiting.get(token)
        if future is not None and not future.done():
            future.set_result(None)

    async def watch(self, connected: Callable[[], bool], cut: Callable[[], None]) -> None:
        """Once a second while connected: a round trip, or `cut()` the connection."""
        while True:
            await asyncio.sleep(_EVERY_S)
            if not connected():
                self.ok = False
                continue
            try:
                await self.round_trip()
                self.ok = True
            except Exception as exc:
                self.ok = False
                if not isinstance(exc, FAULTS):
                    log.error("redis: canary failed: %s: %s", type(exc).__name__, exc)
                if connected():
                    log.warning("redis: delivery canary failed; reconnecting")
                    cut()
