"""`python -m gateway publish MERCHANT_ID EVENT DATA [--config PATH]`: one durable publish.

DATA is parsed as JSON when it parses (then published as text for a string,
compact JSON otherwise), else published as the text given. Prints the event
id. Exit codes: 0 published, 2 bad arguments, 1 Redis failed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import redis
from redis.exceptions import RedisError

from ..config import Config
from ..logs import redact_text, redact_url
from .ids import InvalidData, encode_data, valid_merchant_id
from .publisher import Publisher

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


def run_publish(cfg: Config, merchant_id: str, event: str, data: str) -> int:
    """Publish DATA durably for the merchant; print its id. The process exit code."""
    if not valid_merchant_id(merchant_id):
        print("publish: MERCHANT_ID must match ^[A-Za-z0-9_-]{1,128}$", file=sys.stderr)
        return 2
    if event not in cfg.redis.events:
        print(f"publish: EVENT must be one of {', '.join(cfg.redis.events)}", file=sys.stderr)
        return 2
    try:
        payload = encode_data(parse_data(data))
    except InvalidData as exc:
        print(f"publish: DATA: {exc}", file=sys.stderr)
        return 2
    try:
        client = _client(cfg)
    except (RedisError, ValueError):  # its message may quote the URL: say no more
        return _failed(cfg, "cannot connect")
    publisher = Publisher(
        client,
        channel=cfg.redis.channel,
        history=cfg.sse.history,
        ttl_s=cfg.redis.history_ttl,
        sharded=cfg.redis.cluster,
    )
    try:
        event_id = publisher.publish_payload(merchant_id, event, payload)
    except (RedisError, OSError) as exc:
        return _failed(cfg, redact_text(str(exc)) or type(exc).__name__)
    finally:
        client.close()
    print(event_id)
    return 0
