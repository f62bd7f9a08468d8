"""The running gateway's parts, shared by the views through one typed app key."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from aiohttp import web

from .access.admission import Admission
from .access.auth import Authenticator
from .access.merchants import MerchantDirectory
from .broker import RedisBroker
from .config import Config
from .durable.history import DurableHistory
from .durable.replay import DurableReplay
from .durable.snapshots import Snapshots
from .fanout.hub import Hub
from .fanout.stream_policy import QueuePolicy
from .metrics import Dependencies, Metrics

__all__ = ["GATEWAY", "Gateway"]


@dataclass(eq=False)
class Gateway:
    cfg: Config
    hub: Hub
    broker: RedisBroker
    directory: MerchantDirectory
    auth: Authenticator
    admission: Admission
    metrics: Metrics
    history: DurableHistory
    replay: DurableReplay
    snapshots: Snapshots
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False
    queue_policy: QueuePolicy = field(init=False)
    trusted_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(init=False)

    def __post_init__(self) -> None:
        sse = self.cfg.sse
        self.queue_policy = QueuePolicy(
            sse.max_queue, frozenset(sse.coalesce), sse.job_key, sse.max_queue_bytes
        )
        self.trusted_networks = [
            ipaddress.ip_network(p, strict=False) for p in self.cfg.server.trusted_proxies
        ]

    def sync_metrics(self) -> None:
        hub = self.hub
        broker = self.broker
        deps = Dependencies(
            redis_up=broker.healthy,
            postgres_up=self.directory.healthy,
            delivery_up=broker.delivering,
            canary_s=broker.canary_s,
        )
        self.metrics.sync(
            len(self.admission), broker.merchants, hub.messages, hub.deliveries, deps
        )


GATEWAY = web.AppKey("gateway", Gateway)
