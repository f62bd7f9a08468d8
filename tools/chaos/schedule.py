"""The seeded plan of a run: merchants, clients, publishers and faults.

Everything random about a run is drawn here or from the per-client and
per-publisher seeds drawn here, so ``--seed S`` replays the same schedule (the
processes' own timing still varies, as in any Jepsen-style run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ClientPlan", "FaultPlan", "Plan", "PublisherPlan", "make_plan", "shop_of"]

GATEWAYS = ("workers", "gw-1", "gw-2")  # workers: one process with server.workers 2
SINGLE_FAULTS = ("gw_kill", "redis_restart_aof", "pg_restart", "gw_term", "redis_freeze",
                 "nginx_reload", "redis_restart_lossy")
CLUSTER_FAULTS = ("gw_kill", "cluster_failover", "pg_restart", "gw_term", "redis_freeze",
                  "nginx_reload")


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
class Plan:
    seed: int
    profile: str
    duration: float
    merchants: tuple[str, ...]
    clients: tuple[ClientPlan, ...]
    publishers: tuple[PublisherPlan, ...]
    faults: tuple[FaultPlan, ...]


def shop_of(merchant: str) -> str:
    return f"{merchant}.myshopify.com"


def make_plan(seed: int, duration: float, profile: str, clients: int) -> Plan:
    """The plan of ``seed``: the same arguments give the same plan."""
    rng = random.Random(seed)
    n_merchants = max(3, min(12, clients // 10))
    merchants = tuple(f"chaos-m{i}" for i in range(n_merchants))
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
    return Plan(seed, profile, duration, merchants, tabs, tuple(publishers),
                _faults(rng, duration, profile))


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
