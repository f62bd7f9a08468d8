"""RedisBroker: a merchant's channels held on the one link (or cluster primary) they belong to.

Merchants are subscribed when their first stream opens, counted per open
stream, and unsubscribed `linger` seconds after the last one closes. With one
Redis there is one SubscriberLink (link.py) for every merchant. With
`redis.cluster` there is one link per primary, and a merchant lives on the
primary owning its channels' slot (the merchant id is their hash tag); the
topology is re-read every few seconds and at once when a link fails, a slot
moves (an unasked SUNSUBSCRIBE) or a node answers MOVED. Merchants whose
primary changed are moved and, once subscribed again, resynced; merchants on
healthy primaries see nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from ..config import RedisConfig
from ..errors import UnavailableError
from ..fanout.hub import Hub
from ..metrics import Metrics
from ..runtime.supervision import stop_tasks, supervised
from .cluster import ClusterTopology
from .link import SubscriberLink
from .placement import ClusterPlacement, Subscription

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

_SUBSCRIBE_WAIT_S = 5.0


class RedisBroker(ClusterPlacement):
    def __init__(
        self,
        cfg: RedisConfig,
        hub: Hub,
        metrics: Metrics,
        *,
        linger_s: float,
        on_resync: Callable[[list[str]], None],
        on_live: Callable[[list[str]], None] = lambda merchant_ids: None,
    ) -> None:
        """`on_resync(merchants)`: messages of theirs may have been lost (Redis
        reconnected, or they moved to another cluster primary); called before any
        later message of theirs reaches the hub. `on_live(merchants)`: after
        `on_resync`, their channels are subscribed again."""
        self._cfg = cfg
        self._hub = hub
        self._metrics = metrics
        self._linger_s = linger_s
        self._on_resync = on_resync
        self._on_live = on_live
        self._control_prefix = f"gateway:control:{hub.epoch}:{os.getpid()}"
        self._subs: dict[str, Subscription] = {}
        self._routes: dict[bytes, tuple[str, str]] = {}
        self._links: dict[str, SubscriberLink] = {}
        self._cluster = ClusterTopology(cfg.url) if cfg.cluster else None
        self._topology_changed = asyncio.Event()  # ask placement.py to re-read it
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._cluster is None:
            await self._link(self._cfg.url, self._control_prefix.encode()).start()
        else:
            self._tasks.append(supervised("redis-cluster-topology", self._follow_cluster))

    async def close(self) -> None:
        await stop_tasks(self._tasks)
        for link in list(self._links.values()):
            await link.close()

    @property
    def healthy(self) -> bool:
        links = self._links.values()
        return bool(links) and all(link.healthy for link in links)

    @property
    def delivering(self) -> bool:
        return self.healthy and all(link.canary.ok for link in self._links.values())

    @property
    def canary_s(self) -> float | None:
        times = [link.canary.last_round_trip_s for link in self._links.values()]
        return max((t for t in times if t is not None), default=None)

    @property
    def merchants(self) -> int:
        return len(self._subs)

    def nodes(self) -> dict[str, bool]:
        """Each node's subscriber link: live or not (one entry without a cluster)."""
        return {link.address: link.healthy for link in self._links.values()}

    async def ping(self) -> float:
        """The slowest node's PING round trip in milliseconds; raises if any fails."""
        if not self._links:
            raise UnavailableError("Redis topology unknown")
        return max(await asyncio.gather(*(link.ping() for link in self._links.values())))

    async def round_trip(self, *, shared: bool = False) -> float:
        """The slowest link's delivery canary in milliseconds; raises if any fails.
        `shared`: one that starts after this call, shared with others (Canary.flush)."""
        if not self._links:
            raise UnavailableError("Redis topology unknown")
        canaries = [link.canary for link in self._links.values()]
        return max(await asyncio.gather(*(c.flush() if shared else c.round_trip()
                                          for c in canaries)))

    async def backlog_bytes(self) -> int | None:
        """Largest pub/sub backlog Redis holds for this process (bytes); None if unknown."""
        sizes = await asyncio.gather(*(link.canary.backlog() for link in self._links.values()))
        return None if not sizes or None in sizes else max(s or 0 for s in sizes)

    # -- merchants ---------------------------------------------------------

    async def acquire(self, merchant_id: str) -> None:
        """Count one more stream of `merchant_id`; return once its channels are subscribed."""
        sub = self._subs.get(merchant_id)
        link = sub.link if sub is not None else self._link_for(self._channels_of(merchant_id)[0])
        if link is None or not link.healthy:  # checked first: a lingering sub keeps lingering
            raise UnavailableError("Redis is unavailable")
        if sub is None:
            sub = self._subscribe(merchant_id, link)
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

    def _channels_of(self, merchant_id: str) -> list[bytes]:
        template = self._cfg.channel
        return [
            template.format(merchant_id=merchant_id, event=event).encode()
            for event in self._cfg.events
        ]

    def _subscribe(self, merchant_id: str, link: SubscriberLink) -> Subscription:
        channels = self._channels_of(merchant_id)
        for channel, event in zip(channels, self._cfg.events, strict=True):
            self._routes[channel] = link.routes[channel] = (merchant_id, event)
        sub = self._subs[merchant_id] = Subscription(channels)
        sub.link = link
        link.subscribe(channels)  # the hub opens the merchant once Redis acknowledges it
        return sub

    def _expire(self, merchant_id: str) -> None:
        sub = self._subs.get(merchant_id)
        if sub is None or sub.refs > 0:
            return
        del self._subs[merchant_id]
        for channel in sub.channels:
            self._routes.pop(channel, None)
            if sub.link is not None:
                sub.link.routes.pop(channel, None)
        self._hub.drop(merchant_id)
        if sub.link is not None:
            sub.link.unsubscribe(sub.channels)

    def _subscribed(self, link: SubscriberLink, channel: bytes) -> None:
        """Redis answered the last SUBSCRIBE `link` sent for `channel` (link.py)."""
        target = self._routes.get(channel)
        if target is None:
            return
        merchant_id = target[0]
        sub = self._subs.get(merchant_id)
        if sub is None or sub.link is not link:  # acks from a link it moved away from
            return
        sub.pending.discard(channel)
        if sub.pending:
            return
        if not sub.ready.done():
            self._live(merchant_id, sub)
        if sub.resync_when_ready:
            sub.resync_when_ready = False
            self._on_resync([merchant_id])
            self._on_live([merchant_id])

    def _live(self, merchant_id: str, sub: Subscription) -> None:
        """Every channel of `sub` acknowledged: the hub holds the merchant from here.

        Not earlier: messages read between a SUBSCRIBE and its acknowledgement are
        those of an earlier subscription being undone (linger 0: UNSUBSCRIBE, then
        SUBSCRIBE again), and what was published between the two reached nobody;
        a ring begun with them would bridge that gap.
        """
        self._hub.open(merchant_id)
        sub.ready.set_result(None)

    # -- links -------------------------------------------------------------

    def _link(self, url: str, control: bytes) -> SubscriberLink:
        link = SubscriberLink(
            url,
            self._hub,
            self._metrics,
            control=control,
            sharded=self._cluster is not None,
            on_subscribed=self._subscribed,
            on_reconnecting=self._link_reconnecting,
            on_reconnect=self._link_reconnected,
            on_dropped=self._channel_dropped,
        )
        self._links[url] = link
        return link

    def _link_for(self, channel: bytes) -> SubscriberLink | None:
        if self._cluster is None:
            return next(iter(self._links.values()), None)
        if not self._cluster.known:
            return None
        return self._links.get(self._cluster.url(self._cluster.owner(channel)))

    def _link_reconnecting(self, link: SubscriberLink) -> None:
        """Messages may have been lost while `link` was down: its merchants resync,
        before the new connection delivers anything."""
        self._on_resync([m for m, sub in self._subs.items() if sub.link is link])

    def _link_reconnected(self, link: SubscriberLink) -> None:
        """`link` holds every channel again."""
        merchants = []
        # the lost connection's acks never come; every channel the link subscribed before
        # its control channel, whose ack it awaited, is live now. A merchant moved onto it
        # while it connected is only queued: its own acks prove it (`_subscribed`).
        for merchant_id, sub in self._subs.items():
            if sub.link is not link:
                continue
            sub.pending = {channel for channel in sub.channels if link.queued(channel)}
            if sub.pending:
                continue
            merchants.append(merchant_id)
            if not sub.ready.done():
                self._live(merchant_id, sub)
        self._on_live(merchants)
        if self._cluster is not None:
            self._topology_changed.set()  # a failover may have happened meanwhile

    def _channel_dropped(self, link: SubscriberLink, channel: bytes) -> None:
        log.info("redis cluster: %s dropped a channel (slot moved)", link.address)
        self._topology_changed.set()
