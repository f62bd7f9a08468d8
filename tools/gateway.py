"""GatewayServer: one `python -m gateway --config FILE` child, the harness every caller shares.

Tests (tests/conftest.py), the benchmark (bench/) and `make run` (tools/run_local.py)
start the gateway through this class, on the same process handling as the
Redis/PostgreSQL/nginx services (tools/services/base.py `Service`): own session,
log file, stop by PID (SIGTERM, then SIGKILL), stopped at exit if forgotten.
Readiness is GET /health/live answering while OUR child is alive, so another
process on the port can never pass for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tools.services.base import HOST, Service

__all__ = ["REPO_ROOT", "GatewayServer", "child_env"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class GatewayServer(Service):
    """A gateway process with `config` (a dict written as YAML) and `env`."""

    name = "gateway"

    def __init__(
        self,
        config: dict[str, Any],
        env: dict[str, str],
        *,
        config_path: Path | None = None,
        log_path: Path | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        super().__init__()
        self.config = config
        self.env = env
        self.cwd = cwd
        self.config_path = config_path or self._make_tmpdir() / "gateway.yaml"
        self._log_path = log_path
        server = config.get("server") or {}
        port = server.get("port", 8080)
        # a deliberately invalid port (config-error tests) leaves .port at 0
        self.port: int = port if isinstance(port, int) else 0
        self.host = HOST
        self.path: str = str(server.get("path", "/api/realtime/events"))
        self.base_url = f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<GatewayServer {self.base_url} pid={self.pid}>"

    @property
    def log_path(self) -> Path:
        return self._log_path or self._make_tmpdir() / "gateway.log"

    # -- lifecycle ---------------------------------------------------------

    def spawn(self) -> None:
        """Write the config and start the process; return at once."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._spawn(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path)],
            cwd=str(self.cwd),
            env=self.env,
        )

    def start(self, timeout: float = 30) -> GatewayServer:
        self.spawn()
        return self.wait_ready(timeout)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        self._signal(sig)

    def wait(self, timeout: float = 10) -> int:
        """Wait for exit; the return code (TimeoutError if still running)."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"gateway pid {self.pid} still running after {timeout}s; "
                f"log tail:\n{self.log_text()[-3000:]}"
            ) from None
        self._close_log()
        return rc

    def live(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health/live", timeout=timeout) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 30) -> GatewayServer:
        """Poll GET /health/live until 200 and, with `server.workers` > 1 (and INFO
        logged), until every worker logs `listening on HOST:PORT` (/health/live answers
        from the first one); fail fast if the process exits.

        ServiceError (a RuntimeError) on exit, NotReadyError (a TimeoutError) on time.
        """
        workers = int((self.config.get("server") or {}).get("workers", 1))
        level = str((self.config.get("logging") or {}).get("level", "INFO")).upper()
        if level not in ("DEBUG", "INFO"):
            workers = 1  # the lines are not logged: /health/live only
        line = f"listening on {self.host}:{self.port}"
        self.await_ready(
            lambda: self.live(0.5) and (workers == 1 or self.log_text().count(line) >= workers),
            timeout, interval=0.05)
        return self

    def stop(self, timeout: float | None = None) -> int | None:  # type: ignore[override]
        """SIGTERM by PID, wait (shutdown_timeout + 5 s), then SIGKILL."""
        if timeout is None:
            timeout = float((self.config.get("server") or {}).get("shutdown_timeout", 10)) + 5
        rc = self._reap(signal.SIGTERM, timeout)
        self._cleanup()  # removes a temp dir of our own: pass log_path to keep the log
        return rc

    # -- addresses ---------------------------------------------------------

    @property
    def stream_path(self) -> str:
        return self.path

    def url(self, path: str = "/", **query: Any) -> str:
        q = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.base_url}{path}{q}"

    def stream_url(self, shop: str | None, **query: Any) -> str:
        """``{base_url}{server.path}?shop=SHOP&k=v...`` (shop=None omits it)."""
        params: dict[str, Any] = {}
        if shop is not None:
            params["shop"] = shop
        params.update(query)
        return self.url(self.path, **params)


def child_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """This environment, the repo importable, unbuffered output, `extra` applied (None drops)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
