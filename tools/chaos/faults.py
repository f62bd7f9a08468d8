"""Injecting the planned faults into a :class:`~tools.chaos.topology.Topology`.

Each fault runs to its end (everything restarted and answering) before the
next one starts, and is recorded as a :class:`~tools.chaos.records.Fault` from
its first action to that end. Blocking service calls run in a thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tools.gateway import GatewayServer

from .records import Fault
from .schedule import LOSSY_FAULTS, FaultPlan, due
from .topology import Topology

__all__ = ["FaultRunner"]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos: {what} not back after {timeout}s")
        time.sleep(0.05)


class FaultRunner:
    """Runs ``plans`` at their times after ``t0``; every fault done lands in ``log``."""

    def __init__(self, topo: Topology, plans: tuple[FaultPlan, ...], t0: float,
                 log: list[Fault], lock: asyncio.Lock | None = None) -> None:
        self.topo = topo
        self.plans = plans
        self.t0 = t0
        self.log = log
        self.lock = lock or asyncio.Lock()  # shared with the storms: never both at once

    async def run(self, stop: asyncio.Event) -> None:
        async for plan in due(self.plans, self.t0, stop, self.lock):
            await self._one(plan)

    async def _one(self, plan: FaultPlan) -> None:
        fault = Fault(plan.kind, plan.target, time.monotonic(), 0.0,
                      lossy=plan.kind in LOSSY_FAULTS[self.topo.profile])
        try:
            if plan.kind == "redis_freeze":
                await self._freeze(plan, fault)
            else:
                await asyncio.to_thread(self._blocking, plan, fault)
        finally:
            fault.end = time.monotonic()
            self.log.append(fault)

    async def _freeze(self, plan: FaultPlan, fault: Fault) -> None:
        """SIGSTOP a Redis (a cluster primary) for 1-3 s, then SIGCONT."""
        fault.redis = True
        topo = self.topo
        port = 0
        if topo.cluster is not None:  # a primary frozen past the node timeout fails over
            port = topo.cluster.primaries()[plan.index % 3].port
            server = topo.cluster.servers[port]
            fault.detail = f"primary {port} for {plan.seconds}s"
        else:
            assert topo.redis is not None
            server = topo.redis
            fault.detail = f"{plan.seconds}s"
        server.freeze()
        try:
            await asyncio.sleep(plan.seconds)
        finally:
            server.thaw()
        if topo.cluster is not None:
            await asyncio.to_thread(topo.cluster.wait_healthy, 60)
            # it loses acknowledged writes only if its replica took over meanwhile
            primaries = await asyncio.to_thread(topo.cluster.primaries)
            fault.lossy = port not in {n.port for n in primaries}
            fault.detail += ", failed over" if fault.lossy else ", no failover"

    def _blocking(self, plan: FaultPlan, fault: Fault) -> None:
        topo = self.topo
        kind = plan.kind
        if kind in ("gw_kill", "gw_term"):
            self._gateway(topo.gateways[plan.target], kind == "gw_kill", plan, fault)
        elif kind == "redis_restart_aof":
            assert topo.redis is not None
            fault.redis = True
            topo.redis.restart()  # SIGTERM: the AOF is complete, the history survives
        elif kind == "redis_restart_lossy":
            assert topo.redis is not None
            fault.redis = True
            topo.redis.stop()  # its directory (and AOF) goes: the history is lost
            topo.redis.start()
        elif kind == "cluster_failover":
            assert topo.cluster is not None
            fault.redis = True
            port = topo.cluster.primaries()[plan.index % 3].port
            fault.detail = f"primary {port}"
            topo.cluster.kill_primary(port)
            topo.cluster.wait_failover(port, 60)
            topo.cluster.restart(port, 60)
        elif kind == "pg_restart":
            topo.postgres.restart()
        elif kind == "nginx_reload":
            assert topo.nginx is not None
            topo.nginx.reload()
        else:
            raise ValueError(f"unknown fault {kind}")

    def _gateway(self, gw: GatewayServer, kill: bool, plan: FaultPlan, fault: Fault) -> None:
        """SIGKILL (a crash) or SIGTERM (a deploy) a gateway and start it again. For the
        workers gateway a SIGKILL hits one worker: its supervisor starts another."""
        fault.sigterm = not kill
        if kill and gw.config["server"]["workers"] > 1 and gw.pid is not None:
            pid = gw.pid
            workers = _children(pid)
            victim = workers[plan.index % len(workers)]
            fault.detail = f"worker pid {victim}"
            os.kill(victim, signal.SIGKILL)  # a child of our own gateway process
            _wait(lambda: len(_children(pid)) == 2 and victim not in _children(pid), 30,
                  "worker")
            _wait(lambda: gw.live(0.5), 30, "gateway")
            return
        fault.detail = f"pid {gw.pid}"
        if kill:
            gw.kill()
            time.sleep(min(plan.seconds, 1.0))  # down for a moment, as a crash is
        else:
            gw.stop()
        gw.start(60)
