"""`python -m gateway publish MERCHANT_ID EVENT DATA [--key K] [--seq N] [--config PATH]`.

One durable publish. DATA is parsed as JSON when it parses (then published as
text for a string, compact JSON otherwise), else published as the text given.
Prints the event id; for a repeated `--key`, the first publish's id; `stale`
when the event is stale (its job ended, or `--seq` is not above the job's).
Exit codes: 0 in those three cases, 2 bad arguments, 1 Redis failed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import redis
from redis.exceptions import RedisClusterException, RedisError

from ..config import Config
from ..redaction import redact_text, redact_url
from .history import publisher_settings
from .ids import InvalidData, encode_data, valid_merchant_id
from .jobs import job_in_data, valid_key
from .publisher import Publication, Publisher

__all__ = ["parse_data", "run_publish"]

_TIMEOUT_S = 5.0


def _text_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON: the argument is text


def parse_data(text: str) -> Any:
    """DATA as its JSON value when it is JSON, else the text itself."""
    try:
        return json.loads(text, parse_constant=_text_constant)
    except (ValueError, RecursionError):
        return text


def _client(cfg: Config) -> Any:
    options = {"socket_timeout": _TIMEOUT_S, "socket_connect_timeout": _TIMEOUT_S}
    if cfg.redis.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(cfg.redis.url, **options)
    return redis.Redis.from_url(cfg.redis.url, **options)


def _failed(cfg: Config, reason: str) -> int:
    print(f"publish: Redis {redact_url(cfg.redis.url)} failed: {reason}", file=sys.stderr)
    return 1


def _seq(text: str | None) -> int | None:
    """--seq as an integer >= 0; ValueError otherwise."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise ValueError(text)
    return int(text)


def run_publish(cfg: Config, merchant_id: str, event: str, data: str, *,
                key: str | None = None, seq: str | None = None) -> int:
    """Publish DATA durably for the merchant; print its id. The process exit code."""
    if not valid_merchant_id(merchant_id):
        print("publish: MERCHANT_ID must match ^[A-Za-z0-9_-]{1,128}$", file=sys.stderr)
        return 2
    if event not in cfg.redis.events:
        print(f"publish: EVENT must be one of {', '.join(cfg.redis.events)}", file=sys.stderr)
        return 2
    if key is not None and not valid_key(key):
        print("publish: --key must be 1-128 characters of A-Z a-z 0-9 _ . : -", file=sys.stderr)
        return 2
    try:
        number = _seq(seq)
    except ValueError:
        print("publish: --seq must be an integer >= 0", file=sys.stderr)
        return 2
    value = parse_data(data)
    try:
        payload = encode_data(value)
    except InvalidData as exc:
        print(f"publish: DATA: {exc}", file=sys.stderr)
        return 2
    try:
        client = _client(cfg)
    except (RedisError, RedisClusterException, ValueError):  # may quote the URL: say no more
        return _failed(cfg, "cannot connect")
    publisher = Publisher(client, **publisher_settings(cfg))
    job = job_in_data(value, payload, cfg.sse.job_key)
    try:
        done = publisher.send(Publication(merchant_id, event, payload, job, number, key))
    except (RedisError, RedisClusterException, OSError) as exc:
        return _failed(cfg, redact_text(str(exc)) or type(exc).__name__)
    finally:
        client.close()
    print("stale" if done.stale else done.id)
    return 0
