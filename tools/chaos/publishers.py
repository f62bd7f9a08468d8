"""Publishers at varying rates: the HTTP publish API (objects and arrays), the Python
helper (``gateway.publisher.AsyncPublisher``, the Lua script) and plain
``PUBLISH`` (``SPUBLISH`` on a cluster). Each records every event it sends
(:class:`~tools.chaos.records.Published`), with the durable id it was
acknowledged with, if any.

Payloads are JSON objects ``{"jobId", "pub", "seq", ...}``: ``seq`` counts the
publisher's events, a job sends ``progress``/``stage`` and ends with
``completion`` or ``error``; some carry padding so slow tabs fill their queues.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from gateway.durable.publisher import AsyncPublisher

from .records import Published
from .schedule import PublisherPlan, has_jobs

__all__ = ["CHANNEL", "CLUSTER_CHANNEL", "Publisher", "Refused", "helper_for", "redis_client",
           "refusal"]

_FAULTS = (RedisError, OSError, TimeoutError, aiohttp.ClientError, ValueError, KeyError)
CLUSTER_CHANNEL = "merchant:{{{merchant_id}}}:{event}"
CHANNEL = "merchant:{merchant_id}:{event}"


class Refused(Exception):
    """The publish API answered that it recorded nothing but what ``ids`` names (each
    event's id, None where refused)."""

    def __init__(self, ids: list[str | None], text: str) -> None:
        super().__init__(text)
        self.ids = ids


def refusal(status: int, reply: Any, items: int) -> Refused | None:
    """What a non-200 answer of the publish API says was recorded, as :class:`Refused`;
    None when it cannot tell (the gateway lost Redis mid-publish: "Redis is unavailable",
    docs/publishing.md; or the answer is not the gateway's)."""
    if not isinstance(reply, dict) or "error" not in reply:
        return None
    if status == 503 and reply.get("message") == "Redis is unavailable":
        return None
    if status != 503 and not 400 <= status < 500:
        return None
    ids = reply.get("ids")
    if not (isinstance(ids, list) and len(ids) == items):
        ids = [None] * items
    return Refused([None if i is None else str(i) for i in ids], f"{status}: {reply}")


def mark(records: list[Published], ids: list[str | None], acked: float) -> None:
    """Each record's id from an answer that lists them: one without an id was surely not
    recorded (refused, or stale: docs/publishing.md)."""
    for record, event_id in zip(records, ids, strict=True):
        record.id, record.acked, record.refused = event_id, acked, event_id is None


def redis_client(url: str, cluster: bool, at_most_once: bool = False) -> Any:
    """A bytes client with short timeouts (a frozen Redis must not hang a publisher).

    ``at_most_once``: no command is sent again after a connection error or a timeout
    (redis-py's default retries would run a publish that did run twice, under two ids:
    docs/publishing.md), so the checker may take one event under two ids for a
    gateway's fault. The publishers' client; reads keep the retries."""
    kw: dict[str, Any] = {"socket_timeout": 3, "socket_connect_timeout": 2}
    if at_most_once:
        kw["retry"] = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(url, **kw)
    return aioredis.Redis.from_url(url, **kw)


def helper_for(redis: Any, channel: str, history: int, cluster: bool) -> AsyncPublisher:
    """The Python helper (the gateway's Lua script) as the chaos run's backends use it."""
    return AsyncPublisher(redis, channel=channel, history=history, ttl_s=600, sharded=cluster)


class Publisher:
    """One publisher; :meth:`run` until ``stop`` is set."""

    def __init__(self, plan: PublisherPlan, log: list[Published], http: aiohttp.ClientSession,
                 publish_urls: list[str], path: str, key: str, redis: Any, cluster: bool,
                 history: int) -> None:
        self.plan = plan
        self.log = log
        self.http = http
        self.urls = publish_urls
        self.path = path
        self.key = key
        self.redis = redis
        self.cluster = cluster
        self.channel = CLUSTER_CHANNEL if cluster else CHANNEL
        self.helper = helper_for(redis, self.channel, history, cluster)
        self.rng = random.Random(plan.seed)
        self.seq = 0
        self.jobs: dict[str, int] = dict.fromkeys(plan.merchants, 1)

    def _event(self, merchant: str) -> tuple[str, str, dict[str, Any]]:
        """The next (merchant, event, data) of a job of ``merchant``."""
        self.seq += 1
        roll = self.rng.random()
        event = ("progress" if roll < 0.65 else "stage" if roll < 0.8 else
                 "completion" if roll < 0.95 else "error")
        job = f"{self.plan.name}-{merchant}-{self.jobs[merchant]}"
        if event in ("completion", "error"):
            self.jobs[merchant] += 1
        data: dict[str, Any] = {"jobId": job, "pub": self.plan.name, "seq": self.seq}
        if not has_jobs(merchant):
            del data["jobId"]
        if self.rng.random() < 0.1:
            data["pad"] = "x" * self.rng.randint(500, 4000)
        return merchant, event, data

    async def run(self, stop: asyncio.Event) -> None:
        rate, change = 5.0, 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= change:  # a new rate every few seconds: calm, busy, bursty
                rate, change = self.rng.choice((1.0, 4.0, 10.0, 20.0)), now + self.rng.uniform(2, 5)
            batch = [self._event(self.rng.choice(self.plan.merchants))
                     for _ in range(self.rng.randint(2, 6) if self.rng.random() < 0.3 else 1)]
            await self._send(batch)
            try:
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(rate))
            except TimeoutError:
                pass

    async def _send(self, batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        sent = time.monotonic()
        records = [Published(self.plan.name, d["seq"], m, e, d.get("jobId"),
                             self.plan.kind != "plain", sent) for m, e, d in batch]
        self.log.extend(records)
        if self.plan.kind == "http":
            try:
                mark(records, await self._http(batch), time.monotonic())
            except Refused as refused:
                mark(records, refused.ids, time.monotonic())
            except _FAULTS:
                pass  # not acknowledged: it may have happened all the same
            return
        for i, (record, (m, e, d)) in enumerate(zip(records, batch, strict=True)):
            record.sent = time.monotonic()
            try:
                record.id = await self._one(m, e, d)
            except ResponseError:  # an error reply (READONLY, MOVED, ...): nothing written
                record.refused = record.durable
            except _FAULTS:
                pass  # not acknowledged: it may have happened all the same
            else:
                record.acked = time.monotonic()
                continue
            for later in records[i + 1:]:
                later.refused = later.durable  # never sent
            return

    async def _one(self, merchant: str, event: str, data: dict[str, Any]) -> str | None:
        if self.plan.kind == "lua":
            return await self.helper.publish(merchant, event, data)
        channel = self.channel.format(merchant_id=merchant, event=event)
        payload = json.dumps(data, separators=(",", ":"))
        if self.cluster:
            await self.redis.spublish(channel, payload)
        else:
            await self.redis.publish(channel, payload)
        return None

    async def _http(self, batch: list[tuple[str, str, dict[str, Any]]]) -> list[str | None]:
        items = [{"merchantId": m, "event": e, "data": d} for m, e, d in batch]
        body: Any = items if len(items) > 1 or self.rng.random() < 0.3 else items[0]
        url = f"{self.rng.choice(self.urls)}{self.path}/publish"
        headers = {"Authorization": f"Bearer {self.key}"}
        timeout = aiohttp.ClientTimeout(total=8)
        async with self.http.post(url, json=body, headers=headers, timeout=timeout) as resp:
            reply = await resp.json(content_type=None)
            if resp.status != 200:
                raise refusal(resp.status, reply, len(items)) or aiohttp.ClientError(
                    f"publish answered {resp.status}: {reply}")
        ids = reply["ids"] if isinstance(body, list) else [reply["id"]]
        return [None if i is None else str(i) for i in ids]  # None: stale (none expected)
