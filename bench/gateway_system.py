"""The gateway as a system under test: its bench config, accepted by ``check-config``
before any timing starts, then launched and stopped."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml

from bench.gateway_src import gateway_src
from bench.publishers import PUBLISH_KEY
from bench.systems import PY, STREAM_PATH, System, durable_split
from tools.gateway import GatewayServer
from tools.services import RedisServer, free_port

__all__ = ["Gateway"]


class Gateway(System):
    kind = "gateway"

    def __init__(self, name: str, workers: int, tmp: Path, dsn: str, streams: int,
                 max_new_per_s: int = 1_000_000) -> None:
        super().__init__(name, workers, tmp)
        self.dsn = dsn
        self.streams = streams
        self.max_new_per_s = max_new_per_s
        self.notes: list[str] = []
        self.server: GatewayServer | None = None
        self._launch: tuple[Path, dict[str, str], Path] | None = None  # set by configure()
        durable = durable_split(name)
        if durable is not None:
            self.publish = durable[1]

    def config_text(self, admission: bool) -> str:
        n = max(self.streams + 1000, 1000)
        adm = f"  max_new_streams_per_s: {self.max_new_per_s}\n" if admission else ""
        return (
            "server:\n"
            "  host: 127.0.0.1\n"
            f"  port: {self.port}\n"
            f"  workers: {self.workers}\n"
            "  shutdown_timeout: 3\n"
            f"{adm}"
            "redis:\n  url: ${REDIS_URL}\n"
            "postgres:\n  dsn: ${DATABASE_URL}\n"
            "sse:\n"
            f"  max_connections: {n}\n"
            f"  max_connections_per_merchant: {n}\n"
            "logging:\n  level: WARNING\n"
            + (f"auth:\n  publish_key: {PUBLISH_KEY}\n" if self.publish == "durable-http" else "")
        )

    def redis_url(self) -> str:
        """The Redis the gateway subscribes to: its own, started here."""
        self.redis = RedisServer()
        self.redis.start()
        return self.redis.url

    def start(self) -> None:
        self.configure()
        self.launch()

    def configure(self) -> None:
        """Write the config and have `check-config` accept it (before any timing starts)."""
        redis_url = self.redis_url()
        self.port = self.port or free_port()
        self.path_template = STREAM_PATH
        env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=self.dsn)
        src = gateway_src()
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
        cfg = self.tmp / f"{self.name}.yaml"
        for admission in (True, False):
            cfg.write_text(self.config_text(admission))
            chk = subprocess.run(
                [PY, "-m", "gateway", "check-config", "--config", str(cfg)],
                cwd=src,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if chk.returncode == 0:
                break
            msg = (chk.stderr or chk.stdout).strip().splitlines()
            self.notes.append(f"check-config: {msg[-1] if msg else chk.returncode}")
        else:
            raise RuntimeError(
                "gateway check-config rejected the bench config: " + "; ".join(self.notes)
            )
        self._launch = (cfg, env, src)

    def launch(self) -> None:
        """Start the configured gateway; return once it answers."""
        assert self._launch is not None, "configure() first"
        cfg, env, src = self._launch
        self.server = GatewayServer(
            yaml.safe_load(cfg.read_text()), env,
            config_path=cfg, log_path=self.tmp / f"{self.name}.log", cwd=src,
        )
        self.server.spawn()
        self.proc = self.server.proc
        self.server.wait_ready(60)
        if self.workers > 1:
            time.sleep(1.0)  # let every worker bind

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(15)
            self.server = None
        super().stop()  # workers the supervisor left behind (by PID), then Redis
