"""nginx with a caller-supplied nginx.conf in a throwaway prefix dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

from .base import Service, ServiceError, port_open

__all__ = ["NGINX_MODULES_DIR", "NginxServer", "nginx_main_conf"]

NGINX_MODULES_DIR = "/usr/lib/nginx/modules"


def nginx_main_conf(
    http_body: str,
    *,
    modules: Iterable[str] = (),
    worker_connections: int = 4096,
    worker_processes: int = 1,
) -> str:
    """A complete nginx.conf around ``http_body`` (the inside of ``http {}``).

    Logs and temp paths are relative to the prefix dir that
    :class:`NginxServer` creates.  ``modules`` are module names such as
    ``"ngx_nchan_module"``.  Do not set ``daemon``/``pid``: NginxServer does.
    """
    loads = "".join(f"load_module modules/{m}.so;\n" for m in modules)
    return f"""{loads}worker_processes {worker_processes};
error_log logs/error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log logs/access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
{http_body}
}}
"""


class NginxServer(Service):
    """nginx with a caller-supplied nginx.conf in a throwaway prefix dir.

    Runs ``nginx -p DIR -c nginx.conf -e DIR/logs/error.log
    -g 'daemon off; pid DIR/nginx.pid;'``.  In ``conf_text`` the token
    ``@PREFIX@`` is replaced by DIR; relative paths (``logs/access.log``,
    ``modules/ngx_nchan_module.so``) are relative to DIR.  When ``port`` is
    given, ``start()`` waits until it accepts connections.
    """

    name = "nginx"

    def __init__(self, conf_text: str, port: int | None = None) -> None:
        super().__init__()
        self.conf_text = conf_text
        self.port = port
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    @property
    def prefix(self) -> Path:
        return self._make_tmpdir()

    def __repr__(self) -> str:
        return f"<NginxServer prefix={self.tmpdir} pid={self.pid}>"

    def _prepare(self) -> None:
        d = self.prefix
        os.chmod(d, 0o755)  # workers run as an unprivileged user
        for sub in ("logs", "tmp"):
            (d / sub).mkdir(exist_ok=True)
        if not (d / "modules").exists() and os.path.isdir(NGINX_MODULES_DIR):
            (d / "modules").symlink_to(NGINX_MODULES_DIR)
        (d / "nginx.conf").write_text(self.conf_text.replace("@PREFIX@", str(d)))

    def start(self, timeout: float = 10.0) -> NginxServer:
        if self.running:
            return self
        if not os.path.exists(self.binary):
            raise ServiceError("nginx not found (run tools/bootstrap.sh)")
        self._prepare()
        d = self.prefix
        pidfile = d / "nginx.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        self._spawn(
            [
                self.binary, "-p", f"{d}/", "-c", "nginx.conf",
                "-e", str(d / "logs" / "error.log"),
                "-g", f"daemon off; pid {pidfile};",
            ],
            cwd=str(d),
        )
        port = self.port
        self.await_ready(
            lambda: pidfile.exists() and (port is None or port_open(port)), timeout
        )
        return self

    def diagnostics(self) -> str:
        return self.error_log_text()[-4000:]

    def access_log_text(self) -> str:
        try:
            return (self.prefix / "logs" / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def error_log_text(self) -> str:
        parts = []
        for p in (self.prefix / "logs" / "error.log", self.log_path):
            with contextlib.suppress(OSError):
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def reload(self) -> None:
        """Re-read nginx.conf (SIGHUP to the master PID)."""
        self._prepare()
        self._signal(signal.SIGHUP)

    def stop(self) -> None:
        self._reap(signal.SIGTERM, 10)
        self._cleanup()

    def restart(self, timeout: float = 10.0) -> NginxServer:
        self._reap(signal.SIGTERM, 10)
        return self.start(timeout)
