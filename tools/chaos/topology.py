"""The processes of a chaos run: Redis (or a 3+3 Redis Cluster), PostgreSQL, three
gateways and nginx, all on 127.0.0.1, all started here and stopped by PID.

``workers`` is one gateway process with ``server.workers: 2`` reached directly;
``gw-1`` and ``gw-2`` are separate processes behind nginx, whose config is the
shipped ``config/nginx.conf`` (``hash $arg_shop consistent``) with its
placeholders replaced; tabs reach them through nginx or directly (entries
``gw-1``, ``gw-2``), so a storm can pick the process. On the single profile
``gw-2`` reaches Redis through :class:`~tools.chaos.lag.LagLink` (lag off
except during storms) and has the contract's default queue limits; the others
cut slow tabs early (``sse.max_queue`` 64).
"""

from __future__ import annotations

import contextlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tools.cluster import RedisCluster
from tools.gateway import REPO_ROOT, GatewayServer, child_env
from tools.services import (
    NginxServer,
    PostgresServer,
    RedisServer,
    free_port,
    nginx_main_conf,
)

from .lag import LagLink
from .schedule import BEHIND_NGINX, GATEWAYS, LAGGED, shop_of

__all__ = ["HISTORY", "HISTORY_TTL", "Topology"]

HISTORY = 100  # sse.history of every gateway (the checker's trimmed-history rule uses it)
HISTORY_TTL = 600  # redis.history_ttl (the checker's expired-history rule uses it)
_ISOLATED = ("REDIS_URL", "DATABASE_URL", "GATEWAY_CONFIG", "REDIS_HOST", "REDIS_PORT",
             "REDIS_PASSWORD", "REDIS_DB")


def gateway_config(port: int, workers: int, cluster: bool, key: str,
                   roomy: bool = False) -> dict[str, Any]:
    """A chaos gateway's config; ``roomy``: the contract's default queue limits."""
    queue = ({"max_queue": 1000, "max_queue_bytes": 262144} if roomy else
             {"max_queue": 64, "max_queue_bytes": 65536})
    return {
        "server": {"host": "127.0.0.1", "port": port, "workers": workers,
                   "shutdown_timeout": 3, "max_new_streams_per_s": 0},
        "redis": {"cluster": cluster, "history_ttl": HISTORY_TTL},
        "postgres": {"cache_ttl": 5, "negative_cache_ttl": 1, "recheck": 10},
        # a short linger drops idle rings, so reconnects often replay from Redis
        "sse": {"heartbeat": 5, "retry_ms": 1000, "history": HISTORY, "linger": 2, **queue},
        "auth": {"publish_key": key},
        "logging": {"level": "INFO"},
    }


def nginx_conf(port: int, upstream_ports: list[int]) -> str:
    text = (REPO_ROOT / "config" / "nginx.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstream_ports)
    text = text.replace("    server 127.0.0.1:8080;\n", servers)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("/var/log/nginx/gateway_access.log", "@PREFIX@/logs/gateway_access.log")
    return nginx_main_conf(text)


class Topology:
    """Start with :meth:`start`, stop with :meth:`stop` (idempotent)."""

    def __init__(self, profile: str, merchants: tuple[str, ...], run_dir: Path,
                 lag_ms: float = 0.0) -> None:
        self.profile = profile
        self.lag_ms = lag_ms
        self.lag: LagLink | None = None
        self.merchants = merchants
        self.run_dir = run_dir
        self.key = secrets.token_hex(16)
        self.redis: RedisServer | None = None
        self.cluster: RedisCluster | None = None
        self.postgres = PostgresServer()
        self.gateways: dict[str, GatewayServer] = {}
        self.nginx: NginxServer | None = None
        self.path = "/api/realtime/events"

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.redis is not None
        return self.redis.url

    @property
    def entries(self) -> dict[str, str]:
        """Where clients open streams: nginx (gw-1, gw-2) and every gateway directly."""
        assert self.nginx is not None and self.nginx.port is not None
        return {"nginx": f"http://127.0.0.1:{self.nginx.port}",
                **{name: gw.base_url for name, gw in self.gateways.items()}}

    @property
    def publish_urls(self) -> list[str]:
        return list(self.entries.values())

    def start(self) -> Topology:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.profile == "cluster":
                self.cluster = RedisCluster().start()
            else:  # AOF on: a restart keeps the history (a lossy restart wipes the dir)
                self.redis = RedisServer(extra_args=["--appendonly", "yes",
                                                     "--appendfsync", "everysec"]).start()
            self.postgres.start()
            self.postgres.apply_schema(REPO_ROOT / "config" / "schema.sql")
            for merchant in self.merchants:
                self.postgres.add_merchant(merchant, shop_of(merchant))
            env = child_env({**dict.fromkeys(_ISOLATED), "REDIS_URL": self.redis_url,
                             "DATABASE_URL": self.postgres.dsn})
            if self.redis is not None and self.lag_ms > 0:
                self.lag = LagLink(self.redis.port, self.lag_ms).start()
            for name in GATEWAYS:
                cfg = gateway_config(free_port(), 2 if name == "workers" else 1,
                                     self.cluster is not None, self.key, roomy=name == LAGGED)
                own = env if name != LAGGED or self.lag is None else {
                    **env, "REDIS_URL": self.lag.url}
                self.gateways[name] = GatewayServer(
                    cfg, own,
                    config_path=self.run_dir / f"{name}.yaml",
                    log_path=self.run_dir / f"{name}.log")
            with ThreadPoolExecutor(len(self.gateways)) as pool:
                list(pool.map(lambda g: g.start(60), self.gateways.values()))
            port = free_port()
            upstream = [self.gateways[n].port for n in BEHIND_NGINX]
            self.nginx = NginxServer(nginx_conf(port, upstream), port=port).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything, by PID, in reverse order; the gateway logs stay in ``run_dir``."""
        services: list[Any] = [self.nginx, *self.gateways.values(), self.lag, self.postgres,
                               self.redis, self.cluster]
        for service in services:
            if service is not None:
                with contextlib.suppress(Exception):
                    if hasattr(service, "thaw"):
                        service.thaw()
                    service.stop()
