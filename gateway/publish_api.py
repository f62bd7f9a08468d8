"""`POST {server.path}/publish`: durable publishing over HTTP for key holders.

Enabled by `auth.publish_key` (404 while it is empty); the caller presents the
key as a Bearer token. The body is one `{"merchantId", "event", "data"}`
object or an array of up to 1000, at most 1 MiB; every item is checked before
anything is published. No PostgreSQL lookup: the key holder is trusted.
See docs/publishing.md for every status.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .durable import InvalidData, encode_data, valid_merchant_id
from .state import GATEWAY, Gateway

__all__ = ["MAX_BODY_BYTES", "MAX_ITEMS", "publish_view"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_ITEMS = 1000
_REDIS_TIMEOUT_S = 5.0
# connection faults, and a primary that cannot take writes right now (failover, maxmemory)
_FAULTS = (
    RedisConnectionError, RedisTimeoutError, TimeoutError, OSError, ReadOnlyError, OutOfMemoryError
)
_KEYS = frozenset(("merchantId", "event", "data"))

Item = tuple[str, str, bytes]


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _authorized(request: web.Request, key: str) -> bool:
    """The Bearer token equals `key`; header bytes that are not UTF-8 never do."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        presented = token.strip().encode("utf-8")
    except UnicodeEncodeError:  # aiohttp keeps undecodable bytes as lone surrogates
        return False
    return hmac.compare_digest(presented, key.encode("utf-8"))


async def _read_body(request: web.Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES whether or not Content-Length says so."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _Refusal(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refusal(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _bad(message: str) -> _Refusal:
    return _Refusal(400, "invalid_request", message)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _item(value: Any, where: str, events: tuple[str, ...]) -> Item:
    if not isinstance(value, dict):
        raise _bad(f"{where}: must be an object with merchantId, event and data")
    if value.keys() != _KEYS:
        missing = sorted(_KEYS - value.keys())
        extra = sorted(value.keys() - _KEYS)
        detail = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise _bad(f"{where}: must have exactly merchantId, event and data ({detail})")
    if not valid_merchant_id(value["merchantId"]):
        raise _bad(f"{where}.merchantId: must match ^[A-Za-z0-9_-]{{1,128}}$")
    if not isinstance(value["event"], str) or value["event"] not in events:
        raise _bad(f"{where}.event: must be one of {', '.join(events)}")
    try:
        payload = encode_data(value["data"])
    except InvalidData as exc:
        raise _bad(f"{where}.data: {exc}") from None
    return value["merchantId"], value["event"], payload


def _parse_body(body: bytes, events: tuple[str, ...]) -> tuple[list[Item], bool]:
    """(items, is_batch) of a publish body; `_Refusal` 400 naming the first fault."""
    try:
        doc = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise _bad("body must be JSON (UTF-8)") from None
    if isinstance(doc, dict):
        return [_item(doc, "body", events)], False
    if not isinstance(doc, list):
        raise _bad("body must be an object or an array of objects")
    if not 1 <= len(doc) <= MAX_ITEMS:
        raise _bad(f"array must hold 1 to {MAX_ITEMS} items, got {len(doc)}")
    return [_item(v, f"[{i}]", events) for i, v in enumerate(doc)], True


def _respond(
    gw: Gateway, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    counts = gw.metrics.publish_requests
    counts[status] = counts.get(status, 0) + 1
    return web.json_response(body, status=status, headers=headers)


async def publish_view(request: web.Request) -> web.Response:
    """Validate everything, then publish every item durably, in order; the ids."""
    gw = request.app[GATEWAY]
    key = gw.cfg.auth.publish_key
    try:
        if not key:
            raise _Refusal(404, "not_found", "publishing is disabled (auth.publish_key)")
        if not _authorized(request, key):
            raise _Refusal(401, "invalid_token", "missing or wrong publish key")
        items, batch = _parse_body(await _read_body(request), gw.cfg.redis.events)
    except _Refusal as refusal:
        body = {"error": refusal.code, "message": str(refusal)}
        return _respond(gw, refusal.status, body)
    try:
        async with asyncio.timeout(_REDIS_TIMEOUT_S):
            if batch:
                ids = await gw.history.publish_many(items)
            else:
                ids = [await gw.history.publish(*items[0])]
    except _FAULTS as exc:
        log.warning("publish failed: Redis unavailable (%s)", type(exc).__name__)
        body = {"error": "unavailable", "message": "Redis is unavailable"}
        return _respond(gw, 503, body, {"Retry-After": str(random.randint(1, 5))})
    log.debug("published %d durable event(s), first merchant=%s", len(ids), items[0][0])
    return _respond(gw, 200, {"ids": ids} if batch else {"id": ids[0]})
