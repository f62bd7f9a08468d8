"""The shipped TLS + HTTP/2 nginx edge (config/nginx-tls.conf), run locally.

    conf = nginx_tls_conf(["127.0.0.1:8080"], https_port, http_port, cert, key)
    edge = start_tls_edge(gateway_port=8080)      # throwaway cert, free ports
    print(edge.https_url)                          # https://127.0.0.1:PORT
    edge.stop()

The file is used as shipped; only its documented placeholders are replaced
by text substitution (listen directives, upstream servers, certificate and key
paths, access-log path). For tests and ``make run``: the certificate is
self-signed, so browsers warn unless told otherwise.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.services import NginxServer, free_port, nginx_main_conf, self_signed_cert

__all__ = ["TLS_CONF", "TLS_PLACEHOLDERS", "TlsEdge", "nginx_tls_conf", "start_tls_edge"]

log = logging.getLogger(__name__)

TLS_CONF = Path(__file__).resolve().parent.parent / "config" / "nginx-tls.conf"
TLS_PLACEHOLDERS = (
    "127.0.0.1:8080",
    "listen 443 ssl http2;",
    "listen 80;",
    "/etc/ssl/certs/event-gateway.crt",
    "/etc/ssl/private/event-gateway.key",
    "/var/log/nginx/gateway_access.log",
    "/var/www/acme",
)


def nginx_tls_conf(
    gateways: Sequence[str],
    https_port: int,
    http_port: int,
    cert: Path,
    key: Path,
    access_log: str = "@PREFIX@/logs/gateway_access.log",
    acme_root: str = "@PREFIX@/acme",
) -> str:
    """A complete nginx.conf around config/nginx-tls.conf for 127.0.0.1.

    ``gateways`` are upstream server entries (``"127.0.0.1:8080"``, or with
    parameters: ``"127.0.0.1:8081 down"``). Raises ValueError when the
    shipped file lost a placeholder.
    """
    text = TLS_CONF.read_text()
    body = text.split("upstream event_gateway", 1)[1]  # below the header comment
    for placeholder in TLS_PLACEHOLDERS:
        if body.count(placeholder) != 1:
            raise ValueError(f"{TLS_CONF.name}: placeholder {placeholder!r} not found once")
    servers = "".join(f"    server {g};\n" for g in gateways)
    text = text.replace("    server 127.0.0.1:8080;\n", servers)
    for old, new in (
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("/etc/ssl/certs/event-gateway.crt", str(cert)),
        ("/etc/ssl/private/event-gateway.key", str(key)),
        ("/var/log/nginx/gateway_access.log", access_log),
        ("/var/www/acme", acme_root),
    ):
        text = text.replace(old, new)
    return nginx_main_conf(text)


@dataclass
class TlsEdge:
    """A running TLS edge: its nginx, ports and certificate."""

    nginx: NginxServer
    https_port: int
    http_port: int
    cert: Path
    key: Path
    _cert_dir: Path | None = None

    name = "nginx TLS edge"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def pid(self) -> int | None:
        return self.nginx.pid

    def stop(self) -> None:
        """Stop nginx (by PID) and remove a certificate made for it."""
        self.nginx.stop()
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)


def start_tls_edge(
    gateway_port: int | None = None,
    gateways: Sequence[str] = (),
    cert_key: tuple[Path, Path] | None = None,
    https_port: int | None = None,
    http_port: int | None = None,
) -> TlsEdge:
    """Start nginx with config/nginx-tls.conf in front of local gateways.

    Without ``cert_key`` a throwaway self-signed certificate is made (and
    removed by :meth:`TlsEdge.stop`). Ports default to free ones.
    """
    upstream = list(gateways) or [f"127.0.0.1:{gateway_port or 8080}"]
    cert_dir = None
    if cert_key is None:
        cert_dir = Path(tempfile.mkdtemp(prefix="gw-tls-"))
        cert_key = self_signed_cert(cert_dir)
    https_port = https_port or free_port()
    http_port = http_port or free_port()
    conf = nginx_tls_conf(upstream, https_port, http_port, *cert_key)
    nginx = NginxServer(conf, port=https_port)
    try:
        nginx.start()
    except Exception:
        nginx.stop()
        if cert_dir is not None:
            shutil.rmtree(cert_dir, ignore_errors=True)
        raise
    log.info("TLS edge on https://127.0.0.1:%d (HTTP/2), redirect on :%d", https_port, http_port)
    return TlsEdge(nginx, https_port, http_port, cert_key[0], cert_key[1], cert_dir)
