"""``make run``'s view of the config: read it the gateway's way, then adjust it for the run.

The config is loaded with the gateway's own `load_config` (same `${VAR}`
expansion, same checks, so a bad file stops ``make run`` before anything
starts); the run's copy differs only in ``server.port`` (``PORT``),
``server.demo`` (on) and, with ``CLUSTER=1``, ``redis.cluster`` (on: ``make
run`` then starts a local Redis Cluster).
"""

from __future__ import annotations

import sys
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from gateway.config import load_config
from gateway.errors import ConfigError

__all__ = ["RunSettings", "fail", "load_run_settings", "redis_cli_command", "run_config"]

# Stand-ins while the real services are not started yet (never connected to).
_PLACEHOLDERS = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://placeholder@127.0.0.1:5432/placeholder",
}


@dataclass(frozen=True, slots=True)
class RunSettings:
    raw: dict[str, Any]  # the YAML as written (${VAR} unexpanded): the run's copy starts here
    host: str
    port: int
    path: str
    cluster: bool
    channel: str  # the template, e.g. merchant:{merchant_id}:{event}
    shutdown_timeout: float


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"run: {message}", file=sys.stderr)
    sys.exit(code)


def load_run_settings(path: Path, environ: Mapping[str, str]) -> RunSettings:
    """The effective settings; the port is ``PORT`` if set, else ``server.port``;
    ``CLUSTER=1`` turns ``redis.cluster`` on."""
    env = dict(environ)
    for name, placeholder in _PLACEHOLDERS.items():
        env[name] = env.get(name) or placeholder
    try:
        cfg = load_config(str(path), env)
        raw = yaml.safe_load(path.read_text()) or {}
        if environ.get("CLUSTER") == "1":
            raw["redis"] = {**(raw.get("redis") or {}), "cluster": True}
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as copy:
                yaml.safe_dump(raw, copy)
                copy.flush()
                cfg = load_config(copy.name, env)  # the cluster's default channel, checks
    except ConfigError as exc:
        fail(f"config error: {exc}")
    port: Any = environ.get("PORT") or cfg.server.port
    try:
        port = int(port)
    except ValueError:
        fail(f"PORT is not a number: {port!r}")
    if not 1 <= port <= 65535:
        fail(f"the port must be between 1 and 65535, got {port}")
    return RunSettings(
        raw=raw,
        host=cfg.server.host,
        port=port,
        path=cfg.server.path,
        cluster=cfg.redis.cluster,
        channel=cfg.redis.channel,
        shutdown_timeout=cfg.server.shutdown_timeout,
    )


def run_config(raw: dict[str, Any], port: int) -> dict[str, Any]:
    """The config with server.port = port and server.demo on, for this run only."""
    data = dict(raw)
    data["server"] = {**(data.get("server") or {}), "port": port, "demo": True}
    return data


def redis_cli_command(redis_url: str, cluster: bool = False) -> str:
    """`redis-cli ...` reaching the Redis at `redis_url`, password left as a placeholder."""
    u = urllib.parse.urlsplit(redis_url)
    parts = ["redis-cli"]
    if cluster:
        parts.append("-c")  # follow MOVED to the primary that owns the channel's slot
    if u.scheme == "unix":
        parts += ["-s", u.path]
    else:
        if u.hostname and u.hostname not in ("127.0.0.1", "localhost"):
            parts += ["-h", u.hostname]
        parts += ["-p", str(u.port or 6379)]
        if u.scheme == "rediss":
            parts.append("--tls")
    if u.password:
        parts += ["-a", "'<password>'"]
    db = u.path.lstrip("/") if u.scheme != "unix" else ""
    if db and db != "0":
        parts += ["-n", db]
    return " ".join(parts)
