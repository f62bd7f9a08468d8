"""RedisBroker: the process's one pub/sub connection, shared by every merchant.

Merchants are subscribed when their first stream opens (SUBSCRIBEs of
concurrent openings are batched), counted per open stream, and unsubscribed
`linger` seconds after the last one closes. A private control channel stays
subscribed for the connection's life: its acknowledgement marks the connection
ready, and the canary (canary.py) proves delivery through it. On any
connection fault the supervisor reconnects with capped, jittered exponential
backoff, re-subscribes every held merchant and reports the reconnect so
streams get `resync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import redis.asyncio as aioredis

from ..config import RedisConfig
from ..errors import UnavailableError
from ..hub import Hub
from ..metrics import Metrics
from ..redaction import redact_url
from ..supervision import stop_tasks, supervised
from .canary import Canary
from .connection import CONNECT_TIMEOUT_S, FAULTS, backoff_s, make_client, socket_reader
from .reader import ReaderHooks, read_messages

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_SUBSCRIBE_WAIT_S = 5.0
# the subscriber + 2 for canary and health probes: never grows with merchants or clients
_POOL_SIZE = 3


class _Subscription:
    __slots__ = ("channels", "linger", "pending", "ready", "refs")

    def __init__(self, channels: list[bytes]) -> None:
        self.channels = channels
        self.pending = set(channels)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refs = 0
        self.linger: asyncio.TimerHandle | None = None


class RedisBroker:
    def __init__(
        self,
        cfg: RedisConfig,
        hub: Hub,
        metrics: Metrics,
        *,
        linger_s: float,
        on_reconnect: Callable[[], None],
    ) -> None:
        self._cfg = cfg
        self._hub = hub
        self._metrics = metrics
        self._linger_s = linger_s
        self._on_reconnect = on_reconnect
        self._client = make_client(cfg.url, _POOL_SIZE)
        self.canary = Canary(self._client, f"gateway:control:{hub.epoch}:{os.getpid()}".encode())
        self._subs: dict[str, _Subscription] = {}
        self._channels: dict[bytes, tuple[str, str]] = {}
        self._to_subscribe: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._control_ready: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ever_connected = False
        self.healthy = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            supervised("redis-supervisor", self._supervise),
            supervised("redis-canary", lambda: self.canary.watch(self._connected, self._cut)),
        ]

    async def close(self) -> None:
        for task in (self._flusher, self._reader):
            if task is not None:
                task.cancel()
        await stop_tasks(self._tasks)
        await self._client.aclose(close_connection_pool=True)

    @property
    def merchants(self) -> int:
        return len(self._subs)

    async def round_trip(self) -> float:
        return await self.canary.round_trip()

    async def ping(self) -> float:
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(CONNECT_TIMEOUT_S / 2):
            await self._client.ping()
        return (asyncio.get_running_loop().time() - started) * 1000

    # -- merchants ---------------------------------------------------------

    async def acquire(self, merchant_id: str) -> None:
        """Count one more stream of `merchant_id`; return once its channels are subscribed."""
        if not self.healthy:
            raise UnavailableError("Redis is unavailable")
        sub = self._subs.get(merchant_id)
        if sub is None:
            sub = self._subscribe(merchant_id)
        elif sub.linger is not None:
            sub.linger.cancel()
            sub.linger = None
        sub.refs += 1
        if sub.ready.done():
            return
        try:
            async with asyncio.timeout(_SUBSCRIBE_WAIT_S):
                await asyncio.shield(sub.ready)
        except TimeoutError:
            self.release(merchant_id)
            raise UnavailableError("Redis did not confirm the subscription") from None
        except BaseException:
            self.release(merchant_id)
            raise

    def release(self, merchant_id: str) -> None:
        sub = self._subs.get(merchant_id)
        if sub is None:
            return
        sub.refs -= 1
        if sub.refs <= 0:
            loop = asyncio.get_running_loop()
            sub.linger = loop.call_later(self._linger_s, self._expire, merchant_id)

    def _subscribe(self, merchant_id: str) -> _Subscription:
        template = self._cfg.channel
        channels = []
        for event in self._cfg.events:
            channel = template.format(merchant_id=merchant_id, event=event).encode()
            self._channels[channel] = (merchant_id, event)
            channels.append(channel)
        sub = self._subs[merchant_id] = _Subscription(channels)
        self._hub.open(merchant_id)
        self._to_subscribe.add(merchant_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_subscribes())
        return sub

    def _expire(self, merchant_id: str) -> None:
        sub = self._subs.get(merchant_id)
        if sub is None or sub.refs > 0:
            return
        del self._subs[merchant_id]
        for channel in sub.channels:
            self._channels.pop(channel, None)
        self._to_subscribe.discard(merchant_id)
        self._hub.drop(merchant_id)
        pubsub = self._pubsub
        if pubsub is not None and self.healthy:
            task = asyncio.create_task(self._unsubscribe(pubsub, sub.channels))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _unsubscribe(self, pubsub: aioredis.client.PubSub, channels: list[bytes]) -> None:
        with contextlib.suppress(*FAULTS):
            await pubsub.execute_command("UNSUBSCRIBE", *channels)

    async def _flush_subscribes(self) -> None:
        """Send one SUBSCRIBE for every merchant opened since the last one."""
        await asyncio.sleep(0)
        while self._to_subscribe and self._pubsub is not None:
            batch, self._to_subscribe = self._to_subscribe, set()
            channels = [c for m in batch if m in self._subs for c in self._subs[m].channels]
            try:
                await self._pubsub.execute_command("SUBSCRIBE", *channels)
            except FAULTS:
                return  # the supervisor re-subscribes everything on reconnect

    # -- connection --------------------------------------------------------

    def _connected(self) -> bool:
        return self.healthy and self._reader is not None

    def _cut(self) -> None:
        """Drop the subscriber connection; the supervisor reconnects."""
        self.healthy = False
        if self._reader is not None:
            self._reader.cancel()

    async def _supervise(self) -> None:
        attempt = 0
        log.info("redis: connecting to %s", redact_url(self._cfg.url))
        while True:
            pubsub = self._client.pubsub()
            try:
                await self._connect(pubsub)
                attempt = 0
                assert self._reader is not None
                await asyncio.wait({self._reader})
                if not self._reader.cancelled() and (exc := self._reader.exception()):
                    if not isinstance(exc, FAULTS):
                        log.error("redis reader failed", exc_info=exc)
                    else:
                        log.warning("redis: connection lost (%s)", type(exc).__name__)
            except FAULTS as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning("redis: unavailable (%s: %s)", type(exc).__name__, exc)
            except Exception:  # e.g. a ResponseError from AUTH/SELECT: loud, and retried
                if attempt == 0 or attempt % 10 == 0:
                    log.exception("redis: subscriber connection failed")
            finally:
                await self._disconnect(pubsub)
            attempt += 1
            await asyncio.sleep(backoff_s(attempt))

    async def _connect(self, pubsub: aioredis.client.PubSub) -> None:
        self._control_ready = asyncio.get_running_loop().create_future()
        self._to_subscribe.clear()
        channels = [c for sub in self._subs.values() for c in sub.channels]
        hooks = ReaderHooks(
            channels=self._channels,
            control=self.canary.channel,
            on_control=self.canary.received,
            on_subscribed=self._on_subscribed,
            observe_latency=self._metrics.delivery_latency.observe,
        )
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            # the control channel last: its ack proves every channel before it is live
            await pubsub.execute_command("SUBSCRIBE", *channels, self.canary.channel)
            self._pubsub = pubsub
            self._reader = asyncio.create_task(
                read_messages(socket_reader(pubsub), self._hub, hooks), name="redis-reader"
            )
            await asyncio.shield(self._control_ready)
        stale = [c for c in channels if c not in self._channels]
        if stale:
            await pubsub.execute_command("UNSUBSCRIBE", *stale)
        self.healthy = True
        if self._ever_connected:
            self._metrics.redis_reconnects += 1
            log.info("redis: reconnected; %d merchants re-subscribed", len(self._subs))
            self._on_reconnect()
        else:
            log.info("redis: connected")
        self._ever_connected = True
        if self._to_subscribe:
            self._flusher = asyncio.create_task(self._flush_subscribes())

    async def _disconnect(self, pubsub: aioredis.client.PubSub) -> None:
        self.healthy = False
        self._pubsub = None
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
            self._reader = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), 1)

    def _on_subscribed(self, channel: bytes) -> None:
        if channel == self.canary.channel:
            if self._control_ready is not None and not self._control_ready.done():
                self._control_ready.set_result(None)
            return
        target = self._channels.get(channel)
        sub = self._subs.get(target[0]) if target else None
        if sub is not None:
            sub.pending.discard(channel)
            if not sub.pending and not sub.ready.done():
                sub.ready.set_result(None)
