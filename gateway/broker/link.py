"""SubscriberLink: one pub/sub connection to one Redis node, kept alive.

The link holds a set of channels (the broker decides which merchants live on
which node) plus a private control channel. On connect it subscribes all of
them, the control channel last: its acknowledgement proves every channel before
it is live. The canary (canary.py) proves delivery through it once a second. On
any fault the supervisor reconnects with capped, jittered exponential backoff
and reports the reconnect twice: at the new connection's first answer, before
any message of it is read (`on_reconnecting`: the broker resyncs the link's
merchants, so no stream gets a message of the new connection before its
`resync`), and once every channel is live again (`on_reconnect`).

`sharded` links (Redis Cluster) use SSUBSCRIBE/SPUBLISH, one slot per command.

A channel's acknowledgement reaches the broker (`on_subscribed`) only when it
answers the last SUBSCRIBE this connection sent for it, and the link still holds
the channel: a merchant released and acquired again before Redis answered must
not take the old SUBSCRIBE's answer as proof that its new one is live (its
replay would read too early). Only the link knows which SUBSCRIBEs it sent: one
still queued, or queued before the connection existed, is never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.crc import key_slot

from ..fanout.hub import Hub
from ..metrics import Metrics
from ..redaction import redact_url
from ..runtime.supervision import stop_tasks, supervised
from .canary import Canary
from .connection import (
    CONNECT_TIMEOUT_S,
    FAULTS,
    backoff_s,
    local_address,
    make_client,
    socket_reader,
)
from .reader import ReaderHooks, read_messages

__all__ = ["SubscriberLink"]

log = logging.getLogger(__name__)

# the subscriber + 2 for canary and health probes: never grows with merchants or clients
_POOL_SIZE = 3


class SubscriberLink:
    def __init__(
        self,
        url: str,
        hub: Hub,
        metrics: Metrics,
        *,
        control: bytes,
        sharded: bool,
        on_subscribed: Callable[[SubscriberLink, bytes], None],
        on_reconnecting: Callable[[SubscriberLink], None],
        on_reconnect: Callable[[SubscriberLink], None],
        on_dropped: Callable[[SubscriberLink, bytes], None],
    ) -> None:
        self.url = url
        self._hub = hub
        self._metrics = metrics
        # the channels of the merchants this link holds -> (merchant id, event): what its
        # reader delivers (the broker keeps it; a merchant moved away is not delivered)
        self.routes: dict[bytes, tuple[str, str]] = {}
        self._sharded = sharded
        self._on_subscribed = on_subscribed
        self._on_reconnecting = on_reconnecting
        self._on_reconnect = on_reconnect
        self._on_dropped = on_dropped
        self._client = make_client(url, _POOL_SIZE)
        self.canary = Canary(
            self._client,
            control,
            sharded=sharded,
            address=lambda: local_address(self._pubsub),
            progress=lambda: hub.messages,
        )
        self.channels: set[bytes] = set()
        self._to_subscribe: set[bytes] = set()
        self._unanswered: Counter[bytes] = Counter()  # SUBSCRIBEs sent on this connection
        self._flusher: asyncio.Task[None] | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._control_ready: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ever_connected = False
        self._announce_reconnect = False
        self.healthy = False

    @property
    def address(self) -> str:
        return redact_url(self.url)

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

    async def ping(self) -> float:
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(CONNECT_TIMEOUT_S / 2):
            await self._client.ping()
        return (asyncio.get_running_loop().time() - started) * 1000

    # -- channels ----------------------------------------------------------

    def subscribe(self, channels: Iterable[bytes]) -> None:
        """Hold `channels` from now on; SUBSCRIBEs of one loop iteration are batched."""
        channels = set(channels)
        self.channels |= channels
        self._to_subscribe |= channels
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_subscribes())

    def queued(self, channel: bytes) -> bool:
        """Whether a SUBSCRIBE of `channel` waits to be sent (its answer is still to come)."""
        return channel in self._to_subscribe

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        channels = set(channels)
        self.channels -= channels
        self._to_subscribe -= channels
        pubsub = self._pubsub
        if pubsub is not None and self.healthy and channels:
            task = asyncio.create_task(self._send(pubsub, "UNSUBSCRIBE", channels))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _send(self, pubsub: aioredis.client.PubSub, verb: str, channels: set[bytes]) -> None:
        with contextlib.suppress(*FAULTS):
            for batch in self._batches(channels):
                await pubsub.execute_command(self._verb(verb), *batch)

    def _verb(self, verb: str) -> str:
        return f"S{verb}" if self._sharded else verb

    def _batches(self, channels: Iterable[bytes]) -> list[list[bytes]]:
        """One command's worth of channels: all of them, or one slot each when sharded."""
        if not self._sharded:
            batch = list(channels)
            return [batch] if batch else []
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(channel)].append(channel)
        return list(by_slot.values())

    async def _flush_subscribes(self) -> None:
        """Send what `subscribe` queued, once the connection is up: while it connects,
        `_connect` sends what the link holds and starts this again when done (a channel
        released meanwhile is then never sent, so never left subscribed)."""
        await asyncio.sleep(0)
        while self._to_subscribe and self._pubsub is not None and self.healthy:
            batch, self._to_subscribe = self._to_subscribe, set()
            try:
                for channels in self._batches(batch):
                    self._unanswered.update(channels)
                    await self._pubsub.execute_command(self._verb("SUBSCRIBE"), *channels)
            except FAULTS:
                return  # the supervisor re-subscribes everything on reconnect

    # -- connection --------------------------------------------------------

    def _connected(self) -> bool:
        return self.healthy and self._reader is not None

    def _cut(self) -> None:
        """Drop the connection; the supervisor reconnects."""
        self.healthy = False
        if self._reader is not None:
            self._reader.cancel()

    async def _supervise(self) -> None:
        attempt = 0
        log.info("redis: connecting to %s", self.address)
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
                        log.warning(
                            "redis: connection to %s lost (%s)", self.address, type(exc).__name__
                        )
            except FAULTS as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning(
                        "redis: %s unavailable (%s: %s)", self.address, type(exc).__name__, exc
                    )
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
        hooks = ReaderHooks(
            channels=self.routes,
            control=self.canary.channel,
            on_control=self.canary.received,
            on_subscribed=self._subscribed,
            on_unsubscribed=self._unsubscribed,
            on_redirect=self._redirected,
            observe_latency=self._metrics.delivery_latency.observe,
        )
        verb = self._verb("SUBSCRIBE")
        sent = set(self.channels)
        self._unanswered = Counter(sent)  # an earlier connection's answers never come
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            for channels in self._batches(sent):
                await pubsub.execute_command(verb, *channels)
            # the control channel last: its ack proves every channel before it is live
            await pubsub.execute_command(verb, self.canary.channel)
            self._pubsub = pubsub
            self._announce_reconnect = self._ever_connected  # at Redis' first answer
            self._reader = asyncio.create_task(
                read_messages(socket_reader(pubsub), self._hub, hooks), name="redis-reader"
            )
            await asyncio.shield(self._control_ready)
            if stale := sent - self.channels:  # released while connecting
                await self._send(pubsub, "UNSUBSCRIBE", stale)
        self.healthy = True
        if self._ever_connected:
            self._metrics.redis_reconnects += 1
            log.info("redis: reconnected to %s; %d channels", self.address, len(self.channels))
            self._on_reconnect(self)
        else:
            log.info("redis: connected to %s", self.address)
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

    def _subscribed(self, channel: bytes) -> None:
        if self._announce_reconnect:  # Redis answers: before any message of its channels
            self._announce_reconnect = False
            self._on_reconnecting(self)
        if channel == self.canary.channel:
            if self._control_ready is not None and not self._control_ready.done():
                self._control_ready.set_result(None)
            return
        if self._unanswered[channel] > 1:  # a later SUBSCRIBE of it is still on its way
            self._unanswered[channel] -= 1
            return
        del self._unanswered[channel]
        if channel in self.channels and channel not in self._to_subscribe:  # else one is queued
            self._on_subscribed(self, channel)

    def _redirected(self, reply: str) -> None:
        """Redis Cluster refused an SSUBSCRIBE (MOVED/ASK: the slot is on another node):
        it is never answered, so its channels are not counted as due any more (else an
        answer after the slot comes back would be taken for it); the broker moves them."""
        slot = reply.split(" ", 2)[1] if reply.count(" ") >= 2 else ""
        if slot.isdigit():
            for channel in [c for c in self._unanswered if key_slot(c) == int(slot)]:
                del self._unanswered[channel]
        self._on_dropped(self, b"")

    def _unsubscribed(self, channel: bytes) -> None:
        """An unsubscribe we did not ask for: the cluster moved the channel's slot."""
        if channel in self.channels:
            self._on_dropped(self, channel)
