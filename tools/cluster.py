"""A throwaway local Redis Cluster (3 primaries + 3 replicas) for tests and ``make run``.

    with RedisCluster(password=None) as cluster:  # .url names a node; .nodes; .primary_for()
        cluster.kill_primary(port); cluster.wait_failover(port); cluster.restart(port)
        cluster.migrate_slot(slot, to_port)

Every process is a :class:`tools.services.RedisServer` (own temp dir holding
its ``nodes.conf``; stopped by PID; with a password, ``--requirepass`` and
``--masterauth``: ``.url``, ``.client()``, ``migrate_slot`` and ``redis-cli``,
through ``REDISCLI_AUTH``, carry it). Roles are read from the live cluster, so
they stay right after failovers. ``start_local_cluster()`` is what ``make run`` needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis

from tools.cluster_nodes import ClusterNode, parse_nodes, slot_of
from tools.services import HOST, RedisServer, ServiceError, free_port, port_open

__all__ = ["ClusterNode", "RedisCluster", "cluster_port", "slot_of", "start_local_cluster"]

log = logging.getLogger(__name__)

BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000


def cluster_port() -> int:
    """A free port below 55536 whose bus port (port + 10000) is free too."""
    for _ in range(500):
        port = free_port()
        if port + BUS_OFFSET < 65536 and not port_open(port + BUS_OFFSET):
            return port
    raise ServiceError("no free port pair for a cluster node")


class RedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on free loopback ports."""

    name = "redis-cluster"

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 password: str | None = None) -> None:
        self.primaries_wanted = primaries
        self.replicas_wanted = replicas
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.servers: dict[int, RedisServer] = {}
        self._followers: dict[int, set[int]] = {}  # killed primary -> its replicas' ports

    # -- lifecycle -----------------------------------------------------------
    def _args(self) -> list[str]:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        # --requirepass comes from RedisServer(password=...); replicas authenticate too
        return args + (["--masterauth", self.password] if self.password else [])

    def start(self, timeout: float = 60.0) -> RedisCluster:
        """Start every process, create the cluster, wait until it is fully usable."""
        if (cli := shutil.which("redis-cli")) is None:
            raise ServiceError("redis-cli not found (run tools/bootstrap.sh)")
        count = self.primaries_wanted * (1 + self.replicas_wanted)
        try:
            for _ in range(count):
                server = RedisServer(cluster_port(), self.password, self._args())
                server.name = "redis-cluster"
                self.servers[server.port] = server
                server.start()
            env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
            if self.password:  # `-a PASS` without the password in the process list
                env["REDISCLI_AUTH"] = self.password
            out = subprocess.run(
                [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.servers),
                 "--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, env=env,
            )
            if out.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
            self.wait_healthy(timeout)
            log.info("local Redis Cluster up on ports %s", sorted(self.servers))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process by PID and remove its temp dir."""
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self, limit: int = 2000) -> str:
        """The tail of every node's log (for failure messages)."""
        return "\n".join(f"---- {p} ----\n{s.log_text()[-limit:]}" for p, s in self.servers.items())

    # -- views ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """A node's URL (the first live one started): any node will do for a cluster client.
        It holds the password when the cluster has one: keep it out of messages."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.live_ports()[0]}"

    @property
    def pid(self) -> str:
        """Every node's PID, comma-separated (for "stopping ... (pid ...)" lines)."""
        return ",".join(str(s.pid) for s in self.servers.values() if s.pid is not None)

    def live_ports(self) -> list[int]:
        return [p for p, s in self.servers.items() if s.running]

    def client(self, port: int, **kw: Any) -> redis.Redis:
        """A plain (non-cluster) client of one node; the caller closes it."""
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("password", self.password)
        return redis.Redis(host=HOST, port=port, decode_responses=True, **kw)

    def call(self, port: int, *args: Any) -> Any:
        """One command on one node."""
        with contextlib.closing(self.client(port)) as c:
            return c.execute_command(*args)

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node started, with its role as a live node reports it."""
        view: dict[int, ClusterNode] = {}
        for port in self.live_ports():
            with contextlib.suppress(redis.RedisError):
                view = parse_nodes(self.call(port, "CLUSTER", "NODES"))
                break
        unknown = ClusterNode(0, "", "unknown", None, (), None, False)
        return [replace(view.get(port, unknown), port=port, pid=server.pid, alive=server.running)
                for port, server in self.servers.items()]

    def primaries(self) -> list[ClusterNode]:
        """Live primaries that own slots."""
        return [n for n in self.nodes if n.role == "primary" and n.alive and n.slots]

    def replicas_of(self, port: int) -> list[ClusterNode]:
        nodes = self.nodes
        primary = next(n for n in nodes if n.port == port)
        return [n for n in nodes if n.role == "replica" and n.primary_id == primary.node_id]

    def primary_for(self, key: str | bytes | int) -> ClusterNode:
        """The live primary owning a key's, a channel's, or a slot number's slot."""
        slot = key if isinstance(key, int) else slot_of(key)
        if owner := next((n for n in self.primaries() if n.owns(slot)), None):
            return owner
        raise ServiceError(f"no live primary owns slot {slot}: {self.nodes}")

    # -- readiness -----------------------------------------------------------
    def _problems(self) -> list[str]:
        problems: list[str] = []
        maps: set[tuple[Any, ...]] = set()
        live = self.live_ports()
        for port in live:
            try:
                text = str(self.call(port, "CLUSTER", "INFO"))
                info = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if info.get("cluster_state") != "ok":
                    problems.append(f"{port}: cluster_state {info.get('cluster_state')}")
                view = parse_nodes(self.call(port, "CLUSTER", "NODES"))
                owners = tuple(sorted((n.slots, n.port) for n in view.values() if n.slots))
                roles = tuple(sorted((p, n.role) for p, n in view.items() if p in live))
                maps.add((owners, roles))
                if view[port].role == "primary" and not view[port].slots:
                    problems.append(f"{port}: not yet a replica")  # create's REPLICATE pending
                if set(view) != set(self.servers):
                    problems.append(f"{port}: knows {sorted(view)}")
                replication = self.call(port, "INFO", "replication")
                if view[port].role != "primary" and replication["master_link_status"] != "up":
                    problems.append(f"{port}: replica link not up")
                if down := [p for p, n in view.items() if not n.alive and p in live]:
                    problems.append(f"{port}: sees live {down} as failed")
            except (redis.RedisError, KeyError, ValueError) as exc:
                problems.append(f"{port}: {exc!r}")
        if len(maps) > 1:
            problems.append("nodes disagree on the slot map or the roles")
        return problems

    def wait_healthy(self, timeout: float = 30.0, extra: Callable[[], bool] | None = None) -> None:
        """cluster_state ok and one slot map on every live node, every replica synced."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self._problems()
            if not problems and (extra is None or extra()):
                return
            if time.monotonic() >= deadline:
                raise ServiceError(f"cluster not healthy after {timeout}s: {problems}\n"
                                   f"{self.logs(600)}")
            time.sleep(0.05)

    # -- faults --------------------------------------------------------------
    def kill_primary(self, port: int) -> ClusterNode:
        """SIGKILL a primary (its temp dir stays, so :meth:`restart` works)."""
        node = next(n for n in self.nodes if n.port == port)
        if node.role != "primary":
            raise ServiceError(f"{port} is not a primary: {node}")
        self._followers[port] = {n.port for n in self.replicas_of(port)}
        self.servers[port].kill()
        return node

    def failover(self, port: int, timeout: float = 30.0) -> ClusterNode:
        """A clean failover of the primary on ``port`` (CLUSTER FAILOVER on a replica: no
        write is lost); the replica that took over, once the cluster is ok."""
        followers = self.replicas_of(port)
        self._followers[port] = {n.port for n in followers}
        self.call(followers[0].port, "CLUSTER", "FAILOVER")
        return self.wait_failover(port, timeout)

    def wait_failover(self, port: int, timeout: float = 30.0) -> ClusterNode:
        """Wait until a former replica of ``port`` owns its slots and the cluster is ok."""
        candidates = self._followers.get(port) or {p.port for p in self.replicas_of(port)}
        self.wait_healthy(timeout, extra=lambda: any(n.port in candidates
                                                     for n in self.primaries()))
        return next(n for n in self.primaries() if n.port in candidates)

    def restart(self, port: int, timeout: float = 30.0) -> ClusterNode:
        """Start a killed node again on its port; it rejoins (a failed-over primary
        comes back as a replica) and the cluster is healthy again."""
        self.servers[port].restart()
        self.wait_healthy(timeout)
        return next(n for n in self.nodes if n.port == port)

    def migrate_slot(self, slot: int, to_port: int, timeout: float = 30.0) -> None:
        """Move one slot, keys included, to the primary on ``to_port``; every node agrees."""
        source = self.primary_for(slot)
        target = next(n for n in self.primaries() if n.port == to_port)
        if source.port == target.port:
            return
        self.call(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        self.call(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        auth = ["AUTH", self.password] if self.password else []
        while keys := self.call(source.port, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.call(source.port, "MIGRATE", HOST, target.port, "", 0, 5000, *auth, "KEYS", *keys)
        rest = [n for n in self.primaries() if n.port not in (source.port, target.port)]
        for node in [target, source, *rest]:
            self.call(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

        def moved() -> bool:
            for port in self.live_ports():
                view = parse_nodes(self.call(port, "CLUSTER", "NODES"))
                if not view[target.port].owns(slot) or view[source.port].owns(slot):
                    return False
            return True

        self.wait_healthy(timeout, extra=moved)


def start_local_cluster() -> RedisCluster:
    """``make run``'s cluster: 3 primaries + 3 replicas, running and healthy."""
    return RedisCluster().start()
