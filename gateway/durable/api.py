"""`POST {server.path}/publish`: durable publishing over HTTP for key holders.

Enabled by `auth.publish_key` (404 while it is empty); the caller presents the
key as a Bearer token. The body (body.py) is one `{"merchantId",
"event", "data"}` object or an array of up to 1000, at most 1 MiB; every item
is checked before anything is published, and the per-process publish budget
(gate.py) admits it. No PostgreSQL lookup: the key holder is trusted.
Every Redis refusal is a 503 with its own code, never a 500. See
docs/publishing.md for every status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from .body import Item, Refusal, check_headers, parse_items, read_body
from .gate import PUBLISHING, Busy
from .history import DurableHistory
from .publisher import Outcome, PartialPublish

__all__ = ["PUBLISH_API", "PublishApi", "publish_view"]

log = logging.getLogger(__name__)

_REDIS_TIMEOUT_S = 5.0
_FAULTS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class PublishApi:
    """What the view needs, handed in by app.py (`auth.publish_key`: "" disables it)."""

    publish_key: str
    body_timeout_s: float
    events: tuple[str, ...]
    history: DurableHistory
    metrics: Metrics
    job_key: str = "jobId"


PUBLISH_API = web.AppKey("publish_api", PublishApi)


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


def _respond(
    api: PublishApi, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    counts = api.metrics.publish_requests
    counts[status] = counts.get(status, 0) + 1
    return web.json_response(body, status=status, headers=headers)


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection at once: the rest of the body is
    not read (aiohttp would otherwise linger over it)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return response


def _unavailable(api: PublishApi, code: str, message: str, ids: list[str | None] | None = None
                 ) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if ids is not None:
        body["ids"] = ids
    return _respond(api, 503, body, {"Retry-After": str(random.randint(1, 3))})


def _redis_refusal(exc: Exception) -> tuple[str, str]:
    """(code, message) of a Redis error reply."""
    cause = exc.error if isinstance(exc, PartialPublish) else exc
    if isinstance(cause, OutOfMemoryError):
        return "redis_oom", "Redis is over maxmemory: nothing was recorded"
    if isinstance(cause, ReadOnlyError):  # a primary demoted to a replica (failover)
        return "unavailable", "Redis is a read-only replica now: nothing was recorded"
    return "redis_error", f"Redis refused the publish ({type(cause).__name__})"


async def publish_view(request: web.Request) -> web.Response:
    """Validate everything, then publish every item durably, in order; the ids."""
    api = request.app[PUBLISH_API]
    gate = request.app[PUBLISHING]
    key = api.publish_key
    try:
        if not key:
            raise Refusal(404, "not_found", "publishing is disabled (auth.publish_key)")
        if not _authorized(request, key):
            raise Refusal(401, "invalid_token", "missing or wrong publish key")
        check_headers(request)
        async with gate.admit():
            body = await read_body(request, api.body_timeout_s)
            items, batch = parse_items(body, api.events, api.job_key)
            return await _publish(api, request, items, batch)
    except Refusal as refusal:
        response = _respond(api, refusal.status, {"error": refusal.code, "message": str(refusal)})
        return await _answer_and_close(request, response) if refusal.close else response
    except Busy as busy:
        log.warning("publish refused: %s", busy)
        return _unavailable(api, "unavailable", str(busy))


async def _publish(
    api: PublishApi, request: web.Request, items: list[Item], batch: bool
) -> web.Response:
    gate = request.app[PUBLISHING]
    size = sum(len(item.payload) for item in items)
    try:
        async with gate.turn(size, len(items)), asyncio.timeout(_REDIS_TIMEOUT_S):
            outcomes = await api.history.publish_many(items)
    except _FAULTS as exc:
        log.warning("publish failed: Redis unavailable (%s)", type(exc).__name__)
        return _unavailable(api, "unavailable", "Redis is unavailable")
    except RedisError as exc:  # an error reply: nothing of the refused events was written
        code, message = _redis_refusal(exc)
        if code != "unavailable":  # a read-only replica (a failover) is no refusal for /health
            gate.outcome(code)
        log.warning("publish refused by Redis: %s (%s)", code, type(exc).__name__)
        partial = exc.ids if isinstance(exc, PartialPublish) and batch else None
        return _unavailable(api, code, message, partial)
    gate.outcome(None)
    api.metrics.publish_stale += sum(o.stale for o in outcomes)
    api.metrics.publish_duplicates += sum(o.duplicate for o in outcomes)
    log.debug("published %d durable event(s), first merchant=%s", len(outcomes),
              items[0].merchant_id)
    return _respond(api, 200, answer(outcomes, batch))


def answer(outcomes: list[Outcome], batch: bool) -> dict[str, Any]:
    """The 200 body: `id` (or `ids`), with `stale` and `duplicate` where they apply."""
    if not batch:
        body: dict[str, Any] = {"id": outcomes[0].id}
        if outcomes[0].stale:
            body["stale"] = True
        if outcomes[0].duplicate:
            body["duplicate"] = True
        return body
    body = {"ids": [o.id for o in outcomes]}
    stale = [i for i, o in enumerate(outcomes) if o.stale]
    duplicate = [i for i, o in enumerate(outcomes) if o.duplicate]
    if stale:
        body["stale"] = stale
    if duplicate:
        body["duplicate"] = duplicate
    return body
