"""The per-process publish budget: bounded queue, bounded concurrency, backpressure.

A process never publishes faster than its own subscriber connection reads:
every message it publishes on a merchant channel it holds comes back to it,
and Redis cuts a subscriber whose unread backlog passes its
`client-output-buffer-limit pubsub` (32 MiB hard, 8 MiB for 60 s by default),
which would `resync` every stream of the process. So a publish

1. is admitted only while fewer than `QUEUE` publish requests are in the
   process (each body is at most 1 MiB: the memory they hold is bounded);
2. waits for one of `CONCURRENCY` turns (the Redis pool has 4 connections,
   shared with history reads: a publish never waits on the pool itself);
3. goes ahead only while the backlog Redis holds for the slowest pub/sub
   connection (this process's subscriber, or another gateway process's, which
   this process's publishes feed too: CLIENT LIST `omem`, sampled at most
   every `_SAMPLE_S`, plus what this process published since) is under
   `BACKLOG_LIMIT`. Where it cannot be measured it
   goes ahead only while what this process published since the last delivery
   round trip came back is under that limit (else it runs one first).

A publish that cannot go ahead within `WAIT_S` is refused (`Busy`: 503
`unavailable` + `Retry-After`) before anything is recorded. The gate also
remembers the last Redis refusal of a publish (`redis_oom`, `redis_error`)
until a publish succeeds, for `/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..metrics import Metrics

__all__ = ["BACKLOG_LIMIT", "CONCURRENCY", "PUBLISHING", "QUEUE", "WAIT_S", "Busy", "PublishGate"]

MiB = 1024 * 1024
QUEUE = 32
CONCURRENCY = 2
BACKLOG_LIMIT = 4 * MiB
WAIT_S = 2.0
_SAMPLE_S = 0.02
_ITEM_OVERHEAD = 64  # bytes of a pub/sub message besides its payload (channel, framing)


class Busy(Exception):
    """The publish budget cannot take this publish now; the message says why."""


class PublishGate:
    def __init__(
        self,
        backlog: Callable[[], Awaitable[int | None]],
        flush: Callable[[], Awaitable[float]],
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._backlog = backlog
        self._flush = flush
        self._turns = asyncio.Semaphore(CONCURRENCY)
        self._inside = 0
        self._sampled_at = -1.0
        self._sample: int | None = None
        self._since_sample = 0  # bytes published since the last sample was taken
        self._published = 0  # bytes published, ever
        self._confirmed = 0  # of those, the bytes published before a round trip that ended
        self.failing: str | None = None  # "redis_oom" / "redis_error" until a publish succeeds
        self.failing_since = 0.0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place in the queue, or `Busy` at once when it is full."""
        if self._inside >= QUEUE:
            raise Busy(f"publish queue full ({QUEUE} requests in progress)")
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1

    @contextlib.asynccontextmanager
    async def turn(self, size: int, items: int) -> AsyncIterator[None]:
        """Publish `items` events of `size` payload bytes inside this block, or `Busy`."""
        deadline = time.monotonic() + WAIT_S
        try:
            async with asyncio.timeout(WAIT_S):
                await self._turns.acquire()
        except TimeoutError:
            raise Busy("publish queue full (waiting for a turn)") from None
        try:
            await self._until_drained(deadline)
            cost = size + items * _ITEM_OVERHEAD
            self._since_sample += cost
            self._published += cost
            yield
        finally:
            self._turns.release()

    def outcome(self, code: str | None) -> None:
        """Record how a publish ended: None (published) or the refusal's code."""
        if code is None:
            self.failing = None
        elif self.failing != code:
            self.failing, self.failing_since = code, time.monotonic()

    async def _until_drained(self, deadline: float) -> None:
        paused = False
        while True:
            estimate = await self._estimate()
            if estimate is None:  # not measurable: bound what we published unconfirmed
                if self._published - self._confirmed < BACKLOG_LIMIT:
                    return
                if not paused:
                    paused = True
                    self._metrics.publish_paused += 1
                await self._confirm(deadline)
                continue
            if estimate < BACKLOG_LIMIT:
                return
            if not paused:
                paused = True
                self._metrics.publish_paused += 1
            if time.monotonic() + _SAMPLE_S >= deadline:
                raise Busy(f"Redis holds a backlog of {estimate} bytes for this "
                           "process's subscriber; publishing paused")
            await asyncio.sleep(_SAMPLE_S)

    async def _estimate(self) -> int | None:
        now = time.monotonic()
        if now - self._sampled_at >= _SAMPLE_S:
            self._sampled_at = now
            published_before = self._since_sample
            sample = await self._backlog()
            self._sample = sample
            self._since_sample -= published_before  # keep what was published meanwhile
        return None if self._sample is None else self._sample + self._since_sample

    async def _confirm(self, deadline: float) -> None:
        """One delivery round trip: everything published before it has been read (two
        turns confirming at once confirm the same bytes once)."""
        published = self._published
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._flush()
        except Exception:
            raise Busy("this process's subscriber has not caught up; publishing paused") from None
        self._confirmed = max(self._confirmed, published)


PUBLISHING = web.AppKey("publishing", PublishGate)
