"""Storms: the interleavings a random schedule rarely makes, made on purpose.

One storm (a :class:`~tools.chaos.schedule.StormPlan`) takes tabs of one
merchant and, on the seed's gateway processes:

1. keeps every other tab away from the target (and nginx, which may lead
   there) and moves a few *ballast* tabs to the target, so it is subscribed;
2. turns the target's lagging link to Redis on (single profile,
   :mod:`tools.chaos.lag`): the target now reads every message late;
3. moves the *herd* to the source, a process that reads Redis on time, and
   arms each herd tab to leave for the target the moment it reads a given
   event of the burst;
4. publishes bursts back to back (HTTP arrays of 50-200 through a process's
   publish API, Lua ``publish_many`` pipelines);
5. waits (bounded) until the herd is live on the target, turns the lag off,
   lets the held bytes through, and releases every tab.

Each herd tab then reconnects with the Last-Event-ID of an event the target
has not read yet: the target's ring lacks it, the history is read, and the
events the tab already has arrive live while the stream waits (the duplicate
of 56cb07d), followed by what it missed (the "drop a replayed event" cases).
A storm holds the run's fault lock: faults and storms never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from redis.exceptions import RedisError

from gateway.durable.publisher import PartialPublish

from .clients import BrowserClient, Steering
from .lag import LagLink
from .publishers import CHANNEL, CLUSTER_CHANNEL, Refused, helper_for, mark, refusal
from .records import Published
from .schedule import StormPlan, due, has_jobs

__all__ = ["BurstPublisher", "StormRecord", "StormRunner"]

_MOVE_S = 5.0  # at most this long for a tab to be live where it was sent
_FAULTS = (RedisError, OSError, TimeoutError, aiohttp.ClientError, ValueError, KeyError,
           Refused)


@dataclass(slots=True)
class StormRecord:
    """What a storm did, for the report."""

    plan: StormPlan
    start: float
    end: float = 0.0
    herd_live: int = 0  # herd tabs live on the source when the bursts began
    jumped: int = 0  # herd tabs live on the target at the end
    published: int = 0  # burst events acknowledged
    notes: list[str] = field(default_factory=list)

    def to_json(self, t0: float) -> dict[str, Any]:
        p = self.plan
        return {"merchant": p.merchant, "source": p.source, "target": p.target,
                "lag": p.lag, "bursts": [list(b) for b in p.bursts], "herd": list(p.herd),
                "jumps": list(p.jumps), "start": round(self.start - t0, 3),
                "end": round(self.end - t0, 3), "herd_live": self.herd_live,
                "jumped": self.jumped, "published": self.published, "notes": self.notes}


class StormRunner:
    def __init__(self, plans: tuple[StormPlan, ...], tabs: list[BrowserClient],
                 steering: Steering, lag: LagLink | None, lag_s: float, publish: Any,
                 log: list[StormRecord], lock: asyncio.Lock, t0: float) -> None:
        """``publish(plan, kind, items)`` sends one burst and returns its ids."""
        self.plans = plans
        self.tabs = {t.plan.name: t for t in tabs}
        self.steering = steering
        self.lag = lag
        self.lag_s = lag_s
        self.publish = publish
        self.log = log
        self.lock = lock
        self.t0 = t0

    async def run(self, stop: asyncio.Event) -> None:
        numbers = itertools.count()
        async for plan in due(self.plans, self.t0, stop, self.lock):
            record = StormRecord(plan, time.monotonic())
            self.log.append(record)
            try:
                await self._storm(next(numbers), plan, record)
            finally:
                record.end = time.monotonic()

    async def _storm(self, n: int, plan: StormPlan, record: StormRecord) -> None:
        steered = [self.tabs[name] for name in (*plan.herd, *plan.ballast)]
        herd = steered[:len(plan.herd)]
        ballast = steered[len(plan.herd):]
        self.steering.avoid = {plan.target, "nginx"}
        lagging = plan.lag and self.lag is not None
        try:
            for tab in ballast:
                tab.steer(plan.target)
            for tab in herd:
                tab.steer(plan.source)
            live = await asyncio.gather(*(t.wait_live(plan.target, _MOVE_S) for t in ballast),
                                        *(t.wait_live(plan.source, _MOVE_S) for t in herd))
            herd = [t for t, ok in zip(herd, live[len(ballast):], strict=True) if ok]
            record.herd_live = len(herd)
            if lagging:
                assert self.lag is not None
                self.lag.on()
            for tab in herd:
                tab.arm(plan.target, n, plan.jumps[plan.herd.index(tab.plan.name)])
            await self._bursts(n, plan, record)
            if not record.published:
                return
            moved = await asyncio.gather(*(t.wait_live(plan.target, _MOVE_S) for t in herd))
            record.jumped = sum(moved)
        finally:
            if lagging:
                assert self.lag is not None
                self.lag.off()
                await asyncio.sleep(2 * self.lag_s + 0.3)  # held bytes: time is their only signal
            for tab in steered:
                tab.release()
            self.steering.avoid = set()

    async def _bursts(self, n: int, plan: StormPlan, record: StormRecord) -> None:
        index = 0
        for kind, size in plan.bursts:
            items = []
            for _ in range(size):
                index += 1
                event = "completion" if index % 25 == 0 else "stage"  # ends a job of 25
                data: dict[str, Any] = {"jobId": f"storm{n}-{(index - 1) // 25}",
                                        "pub": f"storm{n}", "seq": index, "storm": n, "i": index}
                if not has_jobs(plan.merchant):
                    del data["jobId"]
                items.append((plan.merchant, event, data))
            try:
                record.published += await self.publish(plan, kind, items)
            except _FAULTS as exc:
                record.notes.append(f"{kind} burst of {size}: {type(exc).__name__}")


class BurstPublisher:
    """Sends a storm's bursts and logs every event as :class:`Published`."""

    def __init__(self, published: list[Published], http: aiohttp.ClientSession,
                 urls: dict[str, str], path: str, key: str, redis: Any, cluster: bool,
                 history: int) -> None:
        self.published = published
        self.http = http
        self.urls = urls
        self.path = path
        self.key = key
        self.helper = helper_for(redis, CLUSTER_CHANNEL if cluster else CHANNEL, history,
                                 cluster)

    async def __call__(self, plan: StormPlan, kind: str,
                       items: list[tuple[str, str, dict[str, Any]]]) -> int:
        sent = time.monotonic()
        records = [Published(d["pub"], d["seq"], m, e, d.get("jobId"), True, sent)
                   for m, e, d in items]
        self.published.extend(records)
        try:
            if kind == "http":
                body = [{"merchantId": m, "event": e, "data": d} for m, e, d in items]
                url = f"{self.urls[plan.via]}{self.path}/publish"
                async with self.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10),
                                          headers={"Authorization": f"Bearer {self.key}"}) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise refusal(resp.status, reply, len(items)) or aiohttp.ClientError(
                            f"publish answered {resp.status}: {reply}")
                ids = [None if i is None else str(i) for i in reply["ids"]]
            else:
                payloads = [(m, e, json.dumps(d, separators=(",", ":")).encode())
                            for m, e, d in items]
                ids = [outcome.id for outcome in await self.helper.publish_many(payloads)]
        except (Refused, PartialPublish) as refused:  # what has an id was published
            mark(records, refused.ids, time.monotonic())
            raise
        mark(records, ids, time.monotonic())
        return sum(1 for i in ids if i is not None)
