"""The delivery canary: a round trip through Redis on the subscriber's own connection.

A token published on a private control channel must come back through the
subscriber's reader; `/health` runs one per request, and `watch` one per
second, cutting the subscriber connection when it stops coming back (a frozen
Redis can keep its socket open while delivering nothing). A token stuck behind
a backlog is not a frozen Redis: while messages keep arriving on the
subscriber, `watch` waits for it (up to `_BACKLOG_CAP_S`) instead of cutting.

`backlog()` reads how many bytes Redis holds for the slowest pub/sub
connection of the node (CLIENT LIST `omem`): this subscriber's, or another
gateway process's (workers, other hosts), which this process's publishes feed
too. The publish API's backpressure (durable/gate.py) keeps it well under
Redis's `client-output-buffer-limit pubsub`, which would cut the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ..runtime import deadlines
from ..runtime.single_flight import SingleFlight
from .connection import FAULTS

__all__ = ["Canary"]

log = logging.getLogger(__name__)

_EVERY_S = 1.0
TIMEOUT_S = 1.5
_BACKLOG_CAP_S = 60.0  # longest a round trip may trail a backlog that keeps draining


class Canary:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: bytes,
        *,
        sharded: bool = False,
        address: Callable[[], str | None] = lambda: None,
        progress: Callable[[], int] = lambda: 0,
    ) -> None:
        self._client = client
        self._address = address  # the subscriber connection's local "host:port"
        self._progress = progress  # messages the subscriber has read so far
        self._no_client_list = False
        self.channel = channel
        self._publish = "SPUBLISH" if sharded else "PUBLISH"
        self._waiting: dict[bytes, asyncio.Future[None]] = {}
        self._ids = itertools.count()
        self.last_round_trip_s: float | None = None
        self.ok = False
        self._flushes: SingleFlight[None, float] = SingleFlight(lambda _: self.round_trip())

    async def round_trip(self, *, patient: bool = False) -> float:
        """Publish a token on the control channel, await it on the subscriber; milliseconds.

        `patient`: past the usual timeout, keep waiting while the subscriber keeps
        reading messages (a backlog drains), up to `_BACKLOG_CAP_S`."""
        token = str(next(self._ids)).encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        started = time.perf_counter()

        async def publish_and_receive() -> None:
            await self._client.execute_command(self._publish, self.channel, token)
            await future

        work = asyncio.ensure_future(publish_and_receive())
        try:  # a loop congested by a storm is not mistaken for a frozen Redis
            await deadlines.wait(asyncio.shield(work), TIMEOUT_S)
        except deadlines.Late:
            if not patient:
                work.cancel()
                raise
            await self._trail_backlog(work, started)
        except BaseException:
            work.cancel()
            raise
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

    async def _trail_backlog(self, work: asyncio.Future[None], started: float) -> None:
        """Wait for `work` while the subscriber keeps reading; `deadlines.Late` once it stops."""
        try:
            while time.perf_counter() - started < _BACKLOG_CAP_S:
                before = self._progress()
                done, _ = await asyncio.wait({work}, timeout=TIMEOUT_S)
                if done:
                    work.result()
                    return
                if self._progress() == before:
                    break  # nothing arrived meanwhile: not a backlog
            raise deadlines.Late
        finally:
            work.cancel()

    async def backlog(self) -> int | None:
        """Bytes Redis holds unsent for the slowest pub/sub connection of this node (CLIENT
        LIST `omem`): this subscriber's, or another gateway process's, whose backlog this
        process's publishes feed as much as its own; None when this subscriber is not
        found (a Unix socket, a proxy) or Redis refuses CLIENT LIST."""
        address = self._address()
        if address is None or self._no_client_list:
            return None
        try:
            clients = await self._client.client_list(_type="pubsub")
        except ResponseError as exc:  # managed Redis may refuse CLIENT LIST
            if str(exc).startswith(("BUSY", "LOADING")):  # for now only: measured again later
                return None
            self._no_client_list = True
            log.warning("redis: CLIENT LIST refused (%s); publish backpressure uses "
                        "delivery round trips only", exc)
            return None
        if not any(entry.get("addr") == address for entry in clients):
            return None
        return max(int(entry.get("omem", 0)) for entry in clients)

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
                await self.round_trip(patient=True)
                self.ok = True
            except (*FAULTS, RedisError) as exc:  # a bug here raises: supervision logs it
                self.ok = False
                if isinstance(exc, RedisError) and not isinstance(exc, FAULTS):
                    log.error("redis: canary failed: %s: %s", type(exc).__name__, exc)
                if connected():
                    log.warning("redis: delivery canary failed; reconnecting")
                    cut()
