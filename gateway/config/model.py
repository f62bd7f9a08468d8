"""The configuration's dataclasses: every key declared once, its bounds in the field's metadata.

`loading.py` builds them from YAML and the environment; `checks.py` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AuthConfig",
    "Config",
    "CorsConfig",
    "LoggingConfig",
    "PostgresConfig",
    "RedisConfig",
    "SSEConfig",
    "ServerConfig",
]


def _num(default: float, lo: float, hi: float | None = None, *, integer: bool = False) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "int": integer})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def _strings(*default: str) -> Any:
    return field(default=tuple(default), metadata={"list": True})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = _num(8080, 0, 65535, integer=True)
    workers: int = _num(1, 1, 64, integer=True)
    path: str = "/api/realtime/events"
    trusted_proxies: tuple[str, ...] = _strings("127.0.0.1")
    shutdown_timeout: float = _num(10, 1, 3600)
    body_timeout: float = _num(10, 0.1, 3600)
    max_new_streams_per_s: int = _num(500, 0, 1_000_000, integer=True)
    demo: bool = False


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = ""
    channel: str = "merchant:{merchant_id}:{event}"
    events: tuple[str, ...] = _strings("progress", "stage", "completion", "error")
    cluster: bool = False
    history_ttl: int = _num(86400, 1, 365 * 86400, integer=True)
    idempotency_ttl: int = _num(600, 1, 30 * 86400, integer=True)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = ""
    pool_min: int = _num(1, 0, 1000, integer=True)
    pool_max: int = _num(10, 1, 1000, integer=True)
    merchant_query: str = "SELECT id FROM merchants WHERE shop_domain = %(shop)s AND active"
    cache_ttl: float = _num(30, 0, 86400)
    negative_cache_ttl: float = _num(5, 0, 86400)
    recheck: float = _num(60, 0, 86400)
    query_timeout: float = _num(2, 0.05, 60)


@dataclass(frozen=True, slots=True)
class SSEConfig:
    heartbeat: float = _num(15, 0.05, 3600)
    retry_ms: int = _num(3000, 0, 3_600_000, integer=True)
    history: int = _num(100, 0, 100_000, integer=True)
    linger: float = _num(30, 0, 86400)
    max_queue: int = _num(1000, 1, 1_000_000, integer=True)
    max_queue_bytes: int = _num(262144, 1024, 1 << 34, integer=True)
    coalesce: tuple[str, ...] = _strings("progress")
    job_key: str = "jobId"
    snapshot: bool = True
    snapshot_jobs: int = _num(100, 1, 10_000, integer=True)
    max_connections: int = _num(20000, 1, 1_000_000, integer=True)
    max_connections_per_merchant: int = _num(200, 1, 1_000_000, integer=True)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    session_token_secret: str = ""
    api_key: str = ""
    ticket_ttl: float = _num(3600, 1, 86400 * 7)
    publish_key: str = ""


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = _strings()


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = _choice("INFO", "DEBUG", "INFO", "WARNING", "ERROR")
    format: str = _choice("text", "text", "json")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    sse: SSEConfig = field(default_factory=SSEConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    redis_source: str = field(default="default", metadata={"internal": True})
