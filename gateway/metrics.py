"""Counters kept as plain ints on the hot path, exported through prometheus-client.

Hot-path code increments attributes of `Metrics` (a few nanoseconds); `sync()`
moves the deltas into prometheus-client objects before each scrape and once a
second. With `server.workers > 1` prometheus-client runs in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by the supervisor), so any worker answers
`/metrics` with the sum over all workers.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

__all__ = ["CLOSE_REASONS", "REFUSAL_CODES", "REPLAY_SOURCES", "Dependencies", "Metrics"]

disable_created_metrics()  # no `_created` series: they double the scrape for nothing

REFUSAL_CODES = (
    "invalid_shop",
    "invalid_token",
    "unknown_merchant",
    "origin_not_allowed",
    "too_many_connections",
    "unavailable",
)

_RENDER_TRIES = 3  # a sibling worker's file may be a few bytes short for an instant

_COUNTERS = {
    "messages": ("gateway_redis_messages", "Messages received from Redis for held merchants"),
    "deliveries": ("gateway_events_delivered", "Events handed to client streams"),
    "slow_client_disconnects": (
        "gateway_slow_client_disconnects",
        "Streams cut for lagging: over sse.max_queue events or sse.max_queue_bytes queued",
    ),
    "coalesced": ("gateway_events_coalesced", "Queued events replaced by a newer one of a job"),
    "redis_reconnects": ("gateway_redis_reconnects", "Redis subscriber reconnections"),
    "replay_hits": ("gateway_replay_hits", "Reconnects whose Last-Event-ID was in history"),
    "replay_misses": ("gateway_replay_misses", "Reconnects that got a resync instead"),
    "revocations": ("gateway_revocations", "Streams closed because the merchant was revoked"),
    "streams_opened": ("gateway_streams_opened", "Streams accepted (200) since start"),
    "history_reads": ("gateway_history_reads", "Reads of a merchant's durable history in Redis"),
    "publish_paused": (
        "gateway_publish_paused",
        "Durable publishes held back by the subscriber's backlog in Redis (backpressure)",
    ),
    "publish_stale": (
        "gateway_publish_stale",
        "Durable publishes dropped as stale (their job ended, or seq not above the job's)",
    ),
    "publish_duplicates": (
        "gateway_publish_duplicates",
        "Durable publishes answered with an earlier publish's id (same idempotency key)",
    ),
    "snapshots": ("gateway_snapshots", "Job-state snapshot frames sent to streams"),
}
CLOSE_REASONS = ("client_gone", "slow_client", "shutdown", "revoked", "drain_timeout")
REPLAY_SOURCES = ("memory", "redis")


@dataclass(frozen=True, slots=True)
class Dependencies:
    """Dependency state, sampled once a second and at each scrape."""

    redis_up: bool
    postgres_up: bool
    delivery_up: bool
    canary_s: float | None


class Metrics:
    """Process-local counts; attribute names are the `_COUNTERS` keys (but the hub's two)."""

    def __init__(self, max_connections: int = 0) -> None:
        # messages and deliveries are counted by the hub; sync() is handed them
        self.slow_client_disconnects = 0
        self.coalesced = 0
        self.redis_reconnects = 0
        self.replay_hits = 0
        self.replay_misses = 0
        self.revocations = 0
        self.streams_opened = 0
        self.history_reads = 0
        self.publish_paused = 0
        self.publish_stale = 0
        self.publish_duplicates = 0
        self.snapshots = 0
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_CODES, 0)
        self.closes: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)
        self.replayed: dict[str, int] = dict.fromkeys(REPLAY_SOURCES, 0)
        self.publish_requests: dict[int, int] = {}
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
        self._closes = Counter(
            "gateway_stream_closes", "Streams ended, by reason", ["reason"], registry=self.registry
        )
        self._replayed = Counter(
            "gateway_replayed_events",
            "Events replayed to reconnecting streams, by where they were found",
            ["source"],
            registry=self.registry,
        )
        self._publish_requests = Counter(
            "gateway_publish_requests",
            "HTTP publish requests, by response status",
            ["status"],
            registry=self.registry,
        )
        self._up = {
            name: Gauge(name, doc, registry=self.registry, multiprocess_mode="livemin")
            for name, doc in (
                ("gateway_redis_up", "1 while the Redis subscriber connection is live"),
                ("gateway_postgres_up", "1 while PostgreSQL answers"),
                ("gateway_delivery_up", "1 while the delivery canary comes back through Redis"),
            )
        }
        self.canary_seconds = Gauge(
            "gateway_delivery_canary_seconds",
            "Last delivery canary round trip (publish to receipt on the subscriber)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.max_connections = Gauge(
            "gateway_max_connections",
            "Configured cap on open streams (sse.max_connections, summed over workers)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.max_connections.set(max_connections)
        for family, labels in (
            (self._refusals, REFUSAL_CODES),
            (self._closes, CLOSE_REASONS),
            (self._replayed, REPLAY_SOURCES),
        ):
            for label in labels:
                family.labels(label)  # every series exists (at 0) from the first scrape
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

    def closed(self, reason: str) -> None:
        self.closes[reason] = self.closes.get(reason, 0) + 1

    def sync(
        self, connections: int, merchants: int, messages: int, deliveries: int, deps: Dependencies
    ) -> None:
        """Push deltas since the last sync into prometheus-client."""
        from_hub = {"messages": messages, "deliveries": deliveries}
        for key, counter in self._counters.items():
            self._push(key, counter, from_hub[key] if key in from_hub else getattr(self, key))
        labelled = (
            ("refusal", self._refusals, self.refusals),
            ("close", self._closes, self.closes),
            ("replayed", self._replayed, self.replayed),
            ("publish", self._publish_requests, self.publish_requests),
        )
        for prefix, family, counts in labelled:
            for label, value in list(counts.items()):
                self._push(f"{prefix}:{label}", family.labels(str(label)), value)
        self.connections.set(connections)
        self.merchants.set(merchants)
        self._up["gateway_redis_up"].set(int(deps.redis_up))
        self._up["gateway_postgres_up"].set(int(deps.postgres_up))
        self._up["gateway_delivery_up"].set(int(deps.delivery_up))
        if deps.canary_s is not None:
            self.canary_seconds.set(deps.canary_s)

    def _push(self, key: str, counter: Counter, value: int) -> None:
        delta = value - self._synced.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._synced[key] = value

    def render(self) -> bytes:
        if not self._multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        for _ in range(_RENDER_TRIES - 1):
            try:
                return generate_latest(registry)
            except struct.error:  # a worker's value file read while it was being created
                time.sleep(0.01)
        return generate_latest(registry)
