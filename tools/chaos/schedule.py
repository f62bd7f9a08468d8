"""The seeded plan of a run: merchants, clients, publishers and faults.

Everything random about a run is drawn here or from the per-client and
per-publisher seeds drawn here, so ``--seed S`` replays the same schedule (the
processes' own timing still varies, as in any Jepsen-style run).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["BEHIND_NGINX", "LOSSY_FAULTS", "ClientPlan", "FaultPlan", "Plan", "PublisherPlan",
           "StormPlan", "due", "has_jobs", "make_plan", "shop_of"]

GATEWAYS = ("workers", "gw-1", "gw-2")  # workers: one process with server.workers 2
BEHIND_NGINX = ("gw-1", "gw-2")  # nginx's upstream; `workers` is reached only directly
LAGGED = "gw-2"  # on the single profile it reaches Redis through tools.chaos.lag
HERDS = ("same", "spread")
SINGLE_FAULTS = ("gw_kill", "redis_restart_aof", "pg_restart", "gw_term", "redis_freeze",
                 "nginx_reload", "redis_restart_lossy")
CLUSTER_FAULTS = ("gw_kill", "cluster_failover", "pg_restart", "gw_term", "redis_freeze",
                  "nginx_reload")
# Faults that can lose acknowledged durable writes. Redis Cluster replicates
# asynchronously: a primary killed, or frozen until its replica takes over, may not
# have passed on what it acknowledged (a freeze is recorded lossy only when its
# replica did take over: faults.py). A single Redis keeps them (AOF, stopped with
# SIGTERM) unless its data is wiped.
LOSSY_FAULTS = {"single": frozenset({"redis_restart_lossy"}),
                "cluster": frozenset({"cluster_failover", "redis_freeze"})}


@dataclass(frozen=True, slots=True)
class ClientPlan:
    name: str
    merchant: str
    seed: int
    slow: bool  # stops reading now and then


@dataclass(frozen=True, slots=True)
class PublisherPlan:
    name: str
    kind: str  # "http" (publish API), "lua" (gateway.publisher), "plain" (PUBLISH/SPUBLISH)
    merchants: tuple[str, ...]
    seed: int


@dataclass(frozen=True, slots=True)
class FaultPlan:
    at: float  # seconds after the start of the load
    kind: str
    target: str
    seconds: float  # how long a freeze lasts / a pause before a restart
    index: int  # which gateway worker / cluster primary, by position


@dataclass(frozen=True, slots=True)
class StormPlan:
    """Tabs of one merchant read on ``source`` while bursts are published, and each
    reconnects to ``target`` the moment it reads burst event ``jumps[i]``; ``ballast``
    tabs hold streams of the merchant on ``target`` meanwhile (so it is subscribed)."""

    at: float
    merchant: str
    source: str
    target: str
    herd: tuple[str, ...]
    ballast: tuple[str, ...]
    jumps: tuple[int, ...]  # per herd tab: the index of the burst event it leaves on
    bursts: tuple[tuple[str, int], ...]  # ("lua" | "http", events), back to back
    via: str  # whose publish API takes the "http" bursts
    lag: bool  # the target's link to Redis lags during the storm


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    profile: str
    duration: float
    merchants: tuple[str, ...]
    clients: tuple[ClientPlan, ...]
    publishers: tuple[PublisherPlan, ...]
    faults: tuple[FaultPlan, ...]
    storms: tuple[StormPlan, ...] = ()
    lag_ms: float = 0.0  # the lagged link's delay (0: none, as on a cluster)
    herd: str = "same"
    burst_max: int = 200


def shop_of(merchant: str) -> str:
    return f"{merchant}.myshopify.com"


def has_jobs(merchant: str) -> bool:
    """Whether the merchant's events carry a ``jobId`` (one merchant's never do)."""
    return "-nojob" not in merchant


def make_plan(seed: int, duration: float, profile: str, clients: int,
              herd: str = "same", burst_max: int = 200) -> Plan:
    """The plan of ``seed``: the same arguments give the same plan.

    ``herd``: ``same``, every tab of a storm leaves on one burst event (so all
    carry one Last-Event-ID); ``spread``, each on its own event (concurrent
    reconnects with different ids, see README "Delivery under faults").
    ``burst_max``: a storm publishes 50 (or fewer) to ``burst_max`` events."""
    rng = random.Random(seed)
    n_merchants = max(3, min(12, clients // 10))
    # the last merchant's events never name a job: it has no job state, so no snapshot
    # follows its resyncs (the gateway's other path for a failed replay)
    merchants = (*(f"chaos-m{i}" for i in range(n_merchants - 1)),
                 f"chaos-nojob{n_merchants - 1}")
    # merchant 0 holds many tabs (about a third of the clients), the rest share the others
    weights = [n_merchants] + [1.0] * (n_merchants - 1)
    tabs = tuple(
        ClientPlan(f"c{i}", rng.choices(merchants, weights)[0], rng.getrandbits(32),
                   slow=rng.random() < 0.25)
        for i in range(clients)
    )
    publishers: list[PublisherPlan] = []
    for i, kind in enumerate(("http", "http", "lua", "lua", "plain")):
        chosen = tuple(sorted(rng.sample(merchants, k=rng.randint(2, n_merchants))))
        if kind != "plain":
            chosen = tuple(sorted({*chosen, merchants[i % n_merchants]}))
        publishers.append(PublisherPlan(f"{kind}{i}", kind, chosen, rng.getrandbits(32)))
    faults = _faults(rng, duration, profile)
    lag_ms = round(rng.uniform(100.0, 200.0), 1) if profile == "single" else 0.0
    storms = _storms(random.Random(rng.getrandbits(32)), duration, tabs, merchants,
                     lag_ms > 0, herd, burst_max)
    return Plan(seed, profile, duration, merchants, tabs, tuple(publishers), faults, storms,
                lag_ms, herd, burst_max)


def _storms(rng: random.Random, duration: float, tabs: tuple[ClientPlan, ...],
            merchants: tuple[str, ...], lagged: bool, herd: str,
            burst_max: int) -> tuple[StormPlan, ...]:
    """Storms 3-6 s apart from 2 s on, none in the last 6 s (a storm waits for a
    fault in progress, and a fault for a storm)."""
    out: list[StormPlan] = []
    at = rng.uniform(1.5, 3.0)
    while at < duration - 6.0:
        merchant = merchants[0] if rng.random() < 0.6 else rng.choice(merchants)
        own = [t for t in tabs if t.merchant == merchant]
        rng.shuffle(own)
        fast = [t.name for t in own if not t.slow]
        herd_tabs = tuple(fast[: rng.randint(2, 6)]) or tuple(t.name for t in own[:1])
        ballast = tuple(t.name for t in own if t.name not in herd_tabs)[: rng.randint(1, 3)]
        target = LAGGED if lagged and rng.random() < 0.85 else rng.choice(GATEWAYS)
        source = rng.choice([g for g in GATEWAYS if g != target])
        total = rng.randint(min(50, burst_max), burst_max)
        cuts = sorted(rng.sample(range(1, total), k=rng.randint(0, 2)))
        bursts = tuple((rng.choice(("lua", "http")), b - a)
                       for a, b in zip([0, *cuts], [*cuts, total], strict=True))
        low = max(0, total - 40)
        if herd == "same":
            jumps = (rng.randint(low, total - 5),) * len(herd_tabs)
        else:
            jumps = tuple(rng.randint(low, total - 5) for _ in herd_tabs)
        via = rng.choice([g for g in GATEWAYS if g != target])
        out.append(StormPlan(round(at, 3), merchant, source, target, herd_tabs, ballast, jumps,
                             bursts, via, lagged and target == LAGGED))
        at += rng.uniform(3.0, 6.0)
    return tuple(out)


def _faults(rng: random.Random, duration: float, profile: str) -> tuple[FaultPlan, ...]:
    """Faults spaced 4-9 s apart from 3 s on, none in the last 6 s; every kind of the
    profile comes once (in a seeded order) before any comes twice."""
    kinds = list(SINGLE_FAULTS if profile == "single" else CLUSTER_FAULTS)
    out: list[FaultPlan] = []
    at = rng.uniform(2.0, 4.0)
    deck: list[str] = []
    while at < duration - 6.0:
        if not deck:
            deck = kinds[:]
            rng.shuffle(deck)
        kind = deck.pop()
        target = rng.choice(GATEWAYS) if kind.startswith("gw_") else (
            "nginx" if kind == "nginx_reload" else "postgres" if kind == "pg_restart" else "redis")
        out.append(FaultPlan(round(at, 3), kind, target, round(rng.uniform(1.0, 3.0), 3),
                             rng.randrange(3)))
        at += rng.uniform(4.0, 9.0)
    return tuple(out)


class _Timed(Protocol):
    @property
    def at(self) -> float: ...


T = TypeVar("T", bound=_Timed)


async def due(plans: Sequence[T], t0: float, stop: asyncio.Event,
              lock: asyncio.Lock) -> AsyncIterator[T]:
    """Each of `plans` at its time (`t0 + plan.at`), yielded while holding `lock` (faults
    and storms never overlap), until `stop` is set."""
    for plan in plans:
        delay = t0 + plan.at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        async with lock:
            if stop.is_set():
                return
            yield plan
