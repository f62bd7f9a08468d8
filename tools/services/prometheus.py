"""A throwaway Prometheus (Debian's ``prometheus``) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .base import HOST, Service, ServiceError, free_port

__all__ = ["PrometheusServer"]


class PrometheusServer(Service):
    """A throwaway Prometheus (Debian's ``prometheus``) on 127.0.0.1.

    ``PrometheusServer(config_text, rule_files={name: text}, port=None)``:
    the config and rule files are written into the temp dir (``@DIR@`` in any
    of them is replaced by it, so ``rule_files: ["@DIR@/alerts.yml"]`` works);
    the TSDB lives there too.  ``start()`` waits for ``/-/ready``;
    :meth:`api` queries the HTTP API.
    """

    name = "prometheus"

    def __init__(
        self,
        config_text: str,
        rule_files: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.config_text = config_text
        self.rule_files = dict(rule_files or {})
        self.port = port or free_port()
        self.binary = shutil.which("prometheus") or "/usr/bin/prometheus"

    def __repr__(self) -> str:
        return f"<PrometheusServer 127.0.0.1:{self.port} pid={self.pid}>"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _prepare(self) -> Path:
        d = self._make_tmpdir()
        for name, text in self.rule_files.items():
            (d / name).write_text(text.replace("@DIR@", str(d)))
        path = d / "prometheus.yml"
        path.write_text(self.config_text.replace("@DIR@", str(d)))
        (d / "data").mkdir(exist_ok=True)
        return path

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("prometheus not found (run tools/bootstrap.sh)")
        config = self._prepare()
        d = self._make_tmpdir()
        self._spawn(
            [
                self.binary,
                f"--config.file={config}",
                f"--web.listen-address={HOST}:{self.port}",
                f"--storage.tsdb.path={d / 'data'}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            cwd=str(d),
        )
        self.await_ready(self._ready, timeout, interval=0.05, errors=(OSError, ValueError))
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as e:  # 503 while starting: its socket closed now,
            e.close()  # not at a garbage collection in some later test (ResourceWarning)
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/{path}?params``: the ``data`` of a successful answer.

        Raises :class:`ServiceError` with Prometheus' error text otherwise.
        """
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise ServiceError(f"prometheus {path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result list (vector/matrix results)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def stop(self) -> None:
        """SIGTERM by PID, wait, remove the temp dir (TSDB included)."""
        self._reap(signal.SIGTERM, 15)
        self._cleanup()
