"""Configuration: YAML file + environment -> frozen, validated dataclasses.

Every key is declared once, as a dataclass field whose metadata carries its
bounds. Unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the dotted key; `__main__` turns that into exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError
from ..logs import redact_url
from .checks import CLUSTER_CHANNEL, resolve_redis, validate

__all__ = [
    "AuthConfig",
    "Config",
    "CorsConfig",
    "LoggingConfig",
    "PostgresConfig",
    "RedisConfig",
    "SSEConfig",
    "ServerConfig",
    "load_config",
    "redacted_dict",
]

log = logging.getLogger(__name__)


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


_SECRET_KEYS = {"auth.session_token_secret", "auth.api_key", "auth.publish_key"}
_URL_KEYS = {"redis.url", "postgres.dsn"}


# a default may hold one level of braces: ${CHANNEL:-merchant:{merchant_id}:{event}}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^{}]|\{[^{}]*\})*))?\}")


class _Expanded(str):
    """A string that came from `${...}`: numeric and boolean keys may parse it."""


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a YAML tree."""
    if isinstance(value, str):
        expanded = _VAR.sub(lambda m: environ.get(m[1]) or (m[2] or ""), value)
        return _Expanded(expanded) if expanded != value else value
    if isinstance(value, list):
        return [_expand(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, environ) for k, v in value.items()}
    return value


def _coerce(key: str, f: dataclasses.Field[Any], raw: Any) -> Any:
    meta = f.metadata
    if meta.get("list"):
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise ConfigError(key, "must be a list of strings")
        return tuple(_utf8(f"{key}[{i}]", v) for i, v in enumerate(raw))
    if isinstance(raw, _Expanded) and ("lo" in meta or f.type == "bool"):
        raw = _parse_scalar(raw)
    if "lo" in meta:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(key, "must be a number")
        if meta["int"] and not isinstance(raw, int):
            raise ConfigError(key, "must be an integer")
        hi = meta["hi"]
        if raw < meta["lo"] or (hi is not None and raw > hi):
            bound = f"between {meta['lo']} and {hi}" if hi is not None else f">= {meta['lo']}"
            raise ConfigError(key, f"must be {bound}, got {raw}")
        return raw
    if f.type == "bool":
        if not isinstance(raw, bool):
            raise ConfigError(key, "must be true or false")
        return raw
    if not isinstance(raw, str):
        raise ConfigError(key, "must be a string")
    choices = meta.get("choices")
    if key == "logging.level":
        raw = raw.upper()
    if choices and raw not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {raw!r}")
    return _utf8(key, raw)


def _utf8(key: str, text: str) -> str:
    """`text` as a plain str (no `_Expanded`); lone surrogates (an environment variable
    that is not UTF-8, a YAML "\\udcff") refused naming only the key: it may be a secret."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(key, "must be UTF-8 text") from None
    return str(text)


def _parse_scalar(text: str) -> Any:
    """`port: ${PORT:-8080}` -> 8080; what is not a YAML scalar stays text (and is refused)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, bool | int | float) else text


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, "must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in data:
        if name not in fields:
            raise ConfigError(f"{prefix}.{name}", "unknown key")
    values = {}
    for name, raw in data.items():
        f = fields[name]
        key = f"{prefix}.{name}"
        if dataclasses.is_dataclass(f.default_factory):
            values[name] = _build(f.default_factory, raw, key)
        else:
            values[name] = _coerce(key, f, raw)
    return cls(**values)


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML at `path` (None: built-in defaults)."""
    environ = os.environ if environ is None else environ
    raw: Any = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            raw = yaml.safe_load(data.decode("utf-8")) or {}
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            bad_line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError("config", f"{path} is not UTF-8 text (line {bad_line})") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where else ""
            raise ConfigError("config", f"invalid YAML{line}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", "top level must be a mapping")
    raw = _expand(raw, environ)
    for name in raw:
        if name not in {f.name for f in dataclasses.fields(Config)} or name == "redis_source":
            raise ConfigError(name, "unknown key")
    sections = {
        f.name: _build(f.default_factory, raw.get(f.name), f.name)  # type: ignore[arg-type]
        for f in dataclasses.fields(Config)
        if not f.metadata.get("internal")
    }
    cfg = Config(**sections)
    if environ.get("DATABASE_URL"):
        dsn = _utf8("postgres.dsn", environ["DATABASE_URL"])
        cfg = dataclasses.replace(cfg, postgres=dataclasses.replace(cfg.postgres, dsn=dsn))
    if cfg.redis.cluster and "channel" not in (raw.get("redis") or {}):
        redis = dataclasses.replace(cfg.redis, channel=CLUSTER_CHANNEL)
        cfg = dataclasses.replace(cfg, redis=redis)
    url, source = resolve_redis(cfg.redis, environ)
    _utf8("redis.url", url)
    cfg = dataclasses.replace(
        cfg, redis=dataclasses.replace(cfg.redis, url=url), redis_source=source
    )
    validate(cfg)
    return cfg


def redacted_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        if section.metadata.get("internal"):
            continue
        values = {}
        for f in dataclasses.fields(getattr(cfg, section.name)):
            key = f"{section.name}.{f.name}"
            value = getattr(getattr(cfg, section.name), f.name)
            if key in _SECRET_KEYS and value:
                value = "***"
            elif key in _URL_KEYS:
                value = redact_url(value)
            elif isinstance(value, tuple):
                value = list(value)
            values[f.name] = value
        out[section.name] = values
    return out
