"""The image's HEALTHCHECK: GET /health/live on the port the gateway listens on.

    python /app/healthcheck.py            # exit 0 if live, 1 if not

The address comes, in order, from ``GATEWAY_HEALTH_URL`` (a full URL), else
from the config the gateway reads (``GATEWAY_CONFIG``, default
/app/config/gateway.yaml): ``server.host`` and ``server.port`` with
``${VAR}`` / ``${VAR:-default}`` expanded as the gateway does, else
127.0.0.1:8080. A wildcard host (0.0.0.0, ::) is probed on loopback. Only
the standard library and PyYAML (a gateway dependency); it never imports the
gateway, so it stays cheap (one run every 10 s) and independent of its layout.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = "/app/config/gateway.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, environ: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: environ.get(m[1]) or (m[2] or ""), str(value))


def live_url(environ: Mapping[str, str]) -> str:
    """The /health/live URL of the gateway configured by `environ`."""
    if url := environ.get("GATEWAY_HEALTH_URL"):
        return url
    host, port = "127.0.0.1", "8080"
    path = Path(environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)
    try:
        server = (yaml.safe_load(path.read_text()) or {}).get("server") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        server = {}
    if "port" in server:
        port = _expand(server["port"], environ).strip() or port
    if "host" in server:
        host = _expand(server["host"], environ).strip() or host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/health/live"


def main() -> int:
    url = live_url(os.environ)
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, ValueError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
