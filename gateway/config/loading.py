"""Loading: YAML file + environment -> the frozen dataclasses of `model.py`, validated.

Every key is declared once, as a dataclass field whose metadata carries its
bounds (model.py). Unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the dotted key; `__main__` turns that into exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import ConfigError
from ..redaction import redact_url
from .checks import CLUSTER_CHANNEL, resolve_redis, validate
from .model import Config

__all__ = ["load_config", "redacted_dict"]

log = logging.getLogger(__name__)


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
        if not math.isfinite(raw):  # NaN passes every comparison; YAML writes it .nan
            raise ConfigError(key, f"must be a finite number, got {raw}")
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
    except (yaml.YAMLError, ValueError, RecursionError):  # a bad date, 5000 digits, [[[...
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


def load_config(
    path: str | None, environ: Mapping[str, str] | None = None, *, needs_postgres: bool = True
) -> Config:
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
        except (ValueError, RecursionError):  # a scalar YAML cannot build, never quoted
            raise ConfigError("config", "invalid YAML: a value YAML cannot read (an "
                              "impossible date, an integer of thousands of digits, nesting "
                              "too deep): quote it") from None
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
    validate(cfg, needs_postgres=needs_postgres)  # publishing alone never uses it
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
