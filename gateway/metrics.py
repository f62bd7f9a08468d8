"""Counters kept as plain ints on the hot path, exported through prometheus-client.

Hot-path code increments attributes of `Metrics` (a few nanoseconds); `sync()`
moves the deltas into prometheus-client objects before each scrape and once a
second. With `server.workers > 1` prometheus-client runs in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by the supervisor), so any worker answers
`/metrics` with the sum over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

__all__ = ["REFUSAL_CODES", "Metrics"]

disable_created_metrics()  # no `_created` series: they double the scrape for nothing

REFUSAL_CODES = (
    "invalid_shop",
    "invalid_token",
    "unknown_merchant",
    "origin_not_allowed",
    "too_many_connections",
    "unavailable",
)

_COUNTERS = {
    "messages": ("gateway_redis_messages", "Messages received from Redis for held merchants"),
    "deliveries": ("gateway_events_delivered", "Events handed to client streams"),
    "slow_client_disconnects": (
        "gateway_slow_client_disconnects",
        "Streams cut because the client lagged more than sse.max_queue events",
    ),
    "coalesced": ("gateway_events_coalesced", "Queued events replaced by a newer one of a job"),
    "redis_reconnects": ("gateway_redis_reconnects", "Redis subscriber reconnections"),
    "replay_hits": ("gateway_replay_hits", "Reconnects whose Last-Event-ID was in history"),
    "replay_misses": ("gateway_replay_misses", "Reconnects that got a resync instead"),
    "revocations": ("gateway_revocations", "Streams closed because the merchant was revoked"),
}


class Metrics:
    """Process-local counts; attribute names are the `_COUNTERS` keys (but the hub's two)."""

    def __init__(self) -> None:
        # messages and deliveries are counted by the hub; sync() is handed them
        self.slow_client_disconnects = 0
        self.coalesced = 0
        self.redis_reconnects = 0
        self.replay_hits = 0
        self.replay_misses = 0
        self.revocations = 0
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_CODES, 0)
        self._synced: dict[str, int] = {}
        self._multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            key: Counter(name, doc, registry=self.registry)
            for key, (name, doc) in _COUNTERS.items()
        }
        self._refusals = Counter(
            "gateway_refusals", "Refused stream requests", ["code"], registry=self.registry
        )
        self.connections = Gauge(
            "gateway_connections",
            "Open client streams",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.merchants = Gauge(
            "gateway_merchants_subscribed",
            "Merchants with a Redis subscription",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "Redis receipt to last socket write of a message's fan-out",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )

    def refused(self, code: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def sync(self, connections: int, merchants: int, messages: int, deliveries: int) -> None:
        """Push deltas since the last sync into prometheus-client."""
        from_hub = {"messages": messages, "deliveries": deliveries}
        for key, counter in self._counters.items():
            self._push(key, counter, from_hub[key] if key in from_hub else getattr(self, key))
        for code, value in self.refusals.items():
            self._push(f"refusal:{code}", self._refusals.labels(code), value)
        self.connections.set(connections)
        self.merchants.set(merchants)

    def _push(self, key: str, counter: Counter, value: int) -> None:
        delta = value - self._synced.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._synced[key] = value

    def render(self) -> bytes:
        if self._multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
