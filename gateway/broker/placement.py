"""RedisBroker's Redis Cluster side: one subscriber link per primary, every merchant
on the primary owning its channels' slot.

`ClusterPlacement._follow_cluster` re-reads the topology every few seconds and at
once when the broker sets `_topology_changed` (a link failed, a slot moved, a
node answered MOVED); merchants whose primary changed are moved and, once
subscribed again, resynced. RedisBroker (subscriber.py) inherits it; the state
below is the broker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .cluster import ClusterTopology
from .link import SubscriberLink

__all__ = ["ClusterPlacement", "Subscription"]

log = logging.getLogger(__name__)

_TOPOLOGY_EVERY_S = 5.0
_TOPOLOGY_RETRY_S = 0.5


class Subscription:
    """One merchant's channels: counted streams, the link holding them, pending acks."""

    __slots__ = ("channels", "linger", "link", "pending", "ready", "refs", "resync_when_ready")

    def __init__(self, channels: list[bytes]) -> None:
        self.channels = channels
        self.pending = set(channels)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refs = 0
        self.linger: asyncio.TimerHandle | None = None
        self.link: SubscriberLink | None = None
        self.resync_when_ready = False


class ClusterPlacement:
    """Mixed into RedisBroker: the methods that keep its links and merchants placed."""

    _cluster: ClusterTopology | None
    _links: dict[str, SubscriberLink]
    _subs: dict[str, Subscription]
    _routes: dict[bytes, tuple[str, str]]
    _topology_changed: asyncio.Event
    _control_prefix: str

    def _link(self, url: str, control: bytes) -> SubscriberLink:
        raise NotImplementedError

    def _link_for(self, channel: bytes) -> SubscriberLink | None:
        raise NotImplementedError


    async def _follow_cluster(self) -> None:
        """Keep one link per primary and every merchant on its slot's primary."""
        assert self._cluster is not None
        while True:
            self._topology_changed.clear()  # news arriving during the read asks for another
            try:
                changed = await self._cluster.refresh()
            except ConnectionError as exc:
                log.warning("redis cluster: %s", exc)
                await asyncio.sleep(_TOPOLOGY_RETRY_S)
                continue
            if changed or not self._links:
                await self._apply_topology()
            unhealthy = any(not link.healthy for link in self._links.values())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TOPOLOGY_RETRY_S if unhealthy else _TOPOLOGY_EVERY_S):
                    await self._topology_changed.wait()

    async def _apply_topology(self) -> None:
        cluster = self._cluster
        assert cluster is not None
        wanted = {cluster.url(address): address for address in cluster.primaries if address}
        for url, address in wanted.items():
            link = self._links.get(url)
            if link is None or cluster.owner(link.canary.channel) != address:
                await self._replace_link(url, address)
        moved = [m for m, sub in self._subs.items() if not self._on_owner(sub)]
        for merchant_id in moved:
            self._move(merchant_id)
        for url in [url for url in self._links if url not in wanted]:
            link = self._links.pop(url)
            log.info("redis cluster: %s is no longer a primary", link.address)
            await link.close()
        if moved:
            log.info("redis cluster: %d merchants moved to another primary", len(moved))

    async def _replace_link(self, url: str, address: str) -> None:
        assert self._cluster is not None
        old = self._links.pop(url, None)
        link = self._link(url, self._cluster.channel_on(address, self._control_prefix))
        await link.start()
        log.info("redis cluster: subscriber link to primary %s", link.address)
        if old is not None:
            for sub in self._subs.values():
                if sub.link is old:
                    sub.link = None  # moved below
            await old.close()

    def _on_owner(self, sub: Subscription) -> bool:
        return sub.link is not None and sub.link is self._link_for(sub.channels[0])

    def _move(self, merchant_id: str) -> None:
        """Hold the merchant on its slot's primary; what the old link still reads of it
        (a primary frozen, then thawed after a failover, sends what it buffered and
        what it took before it learnt it was demoted) is no longer delivered."""
        sub = self._subs[merchant_id]
        if sub.link is not None:
            for channel in sub.channels:
                sub.link.routes.pop(channel, None)
            sub.link.unsubscribe(sub.channels)
        link = self._link_for(sub.channels[0])
        sub.link = link
        sub.pending = set(sub.channels)
        sub.resync_when_ready = True
        if link is not None:
            for channel in sub.channels:
                link.routes[channel] = self._routes[channel]
            link.subscribe(sub.channels)

