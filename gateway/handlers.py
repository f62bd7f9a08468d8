"""HTTP views of the stream and its ticket; the only place domain errors become refusals."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from .access.merchants import Merchant
from .errors import InvalidTokenError, UnavailableError, UnknownMerchantError
from .fanout.frames import Control, control_frame
from .fanout.stream import Stream
from .fanout.stream_policy import CloseReason
from .logs import STREAM_LINES
from .state import GATEWAY, Gateway
from .web.forwarded import client_address
from .web.sse import SharedHeartbeatResponse
from .web.stream_only import stream_only
from .web.writer import payload_writer

__all__ = ["stream_view", "ticket_preflight", "ticket_view"]

log = logging.getLogger(__name__)

SHOP_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,61}\.myshopify\.com")
_RETRY_AFTER_MERCHANT_FULL_S = 5
_RETRY_AFTER_UNAVAILABLE_S = (1, 5)  # a random second in this range
_RETRY_AFTER_SUBSCRIBE_S = 2  # Redis did not take the merchant's subscription
# sampled before they are built (logs.STREAM_LINES): a storm logs a few, counts the rest
_OPEN_LINE = "stream open merchant=%s shop=%s client=%s replayed=%d"
_CLOSE_LINE = "stream close merchant=%s shop=%s client=%s reason=%s duration_s=%.1f"


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s


def _refuse(gw: Gateway, refusal: Refusal, cors: dict[str, str]) -> web.Response:
    gw.metrics.refused(refusal.code)
    headers = dict(cors)
    if refusal.retry_after_s is not None:
        headers["Retry-After"] = str(refusal.retry_after_s)
    body = {"error": refusal.code, "message": str(refusal)}
    return web.json_response(body, status=refusal.status, headers=headers)


def _cors_headers(request: web.Request, gw: Gateway) -> dict[str, str] | None:
    """CORS response headers; None when the Origin is not allowed."""
    allowed = gw.cfg.cors.allow_origins
    origin = request.headers.get("Origin")
    if not allowed or origin is None:
        return {}
    if "*" in allowed or origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return None


def _query(request: web.Request) -> dict[str, str]:
    """The first value of each query parameter, parsed as `request.query` parses it
    (yarl: `parse_qsl`, blank values kept), without the copy yarl would cache on the
    request's URL, which lives as long as the stream (~0.5 KB each)."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
        query.setdefault(name, value)
    return query


def _shop(query: dict[str, str]) -> str:
    shop = query.get("shop", "")
    if not SHOP_PATTERN.fullmatch(shop):
        raise Refusal(400, "invalid_shop", "shop must be a *.myshopify.com domain")
    return shop


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


@dataclass(slots=True)
class _Admitting:
    """A stream request on its way down the refusal table."""

    request: web.Request
    gw: Gateway
    cors: dict[str, str] | None
    query: dict[str, str]
    shop: str = ""
    merchant: Merchant | None = None
    unavailable: str | None = None  # a 503 found early, answered in its own (last) row


async def _valid_shop(a: _Admitting) -> None:
    """400 invalid_shop."""
    a.shop = _shop(a.query)


async def _valid_token(a: _Admitting) -> None:
    """401 invalid_token: a ticket, or a session token (query or Bearer), when auth is on."""
    gw = a.gw
    if not gw.auth.enabled:
        return
    try:
        ticket = a.query.get("ticket")
        if ticket:
            gw.auth.check_ticket(ticket, a.shop)
        else:
            gw.auth.check_session_token(a.query.get("token") or _bearer(a.request), a.shop)
    except InvalidTokenError as exc:
        raise Refusal(401, "invalid_token", str(exc)) from None


async def _known_merchant(a: _Admitting) -> None:
    """403 unknown_merchant. A lookup PostgreSQL cannot answer, or one the new-stream
    rate has no token for in time (README: the one exception to "first row wins"),
    is a 503."""
    try:
        a.merchant = await a.gw.directory.verify(a.shop)
    except UnknownMerchantError as exc:
        raise Refusal(403, "unknown_merchant", str(exc)) from None
    except UnavailableError as exc:
        a.unavailable = str(exc)


async def _allowed_origin(a: _Admitting) -> None:
    """403 origin_not_allowed."""
    if a.cors is None:
        raise Refusal(403, "origin_not_allowed", "origin not allowed")


async def _merchant_has_room(a: _Admitting) -> None:
    """429 too_many_connections: the merchant is at `sse.max_connections_per_merchant`."""
    if a.merchant is not None and a.gw.admission.merchant_full(a.merchant.id):
        message = "too many streams for this merchant"
        raise Refusal(429, "too_many_connections", message, _RETRY_AFTER_MERCHANT_FULL_S)


async def _available(a: _Admitting) -> None:
    """503 unavailable: a lookup that could not be made, shutting down, the process at
    `sse.max_connections`, or Redis down."""
    gw = a.gw
    reason = a.unavailable
    if reason is None:
        if gw.draining:
            reason = "shutting down"
        elif gw.admission.process_full():
            reason = "connection limit reached"
        elif not gw.broker.healthy:
            reason = "Redis is unavailable"
    if reason is not None or a.merchant is None:
        raise Refusal(503, "unavailable", reason or "unavailable", _spread_retry_after())


# README.md, "The stream": the refusal table, row by row; the first row that applies wins
_REFUSAL_TABLE: tuple[Callable[[_Admitting], Awaitable[None]], ...] = (
    _valid_shop,
    _valid_token,
    _known_merchant,
    _allowed_origin,
    _merchant_has_room,
    _available,
)


async def _admit(request: web.Request, gw: Gateway, cors: dict[str, str] | None) -> Merchant:
    """The merchant of an admitted stream; `Refusal` of the first row that applies."""
    admitting = _Admitting(request, gw, cors, _query(request))
    for check in _REFUSAL_TABLE:
        await check(admitting)
    merchant = admitting.merchant
    if merchant is None:  # _available refuses it; kept for the type checker
        raise Refusal(503, "unavailable", "unavailable", _spread_retry_after())
    return merchant


def _spread_retry_after() -> int:
    """Retry-After of a 503: spread, so refused clients do not all come back at once."""
    return random.randint(*_RETRY_AFTER_UNAVAILABLE_S)


async def stream_view(request: web.Request) -> web.StreamResponse:
    """Admit, open and hold one stream; its frame is the only one of ours awaiting
    while the stream is open (each coroutine held per stream costs memory)."""
    gw = request.app[GATEWAY]
    cors = _cors_headers(request, gw)
    try:
        merchant = await _admit(request, gw, cors)
    except Refusal as refusal:
        return _refuse(gw, refusal, cors or {})
    client = client_address(request, gw.trusted_networks)
    stream = Stream(merchant.id, merchant.shop, client, gw.queue_policy, gw.metrics)
    gw.admission.enter(stream)
    try:
        try:
            await gw.broker.acquire(merchant.id)
        except UnavailableError as exc:
            refused = Refusal(503, "unavailable", str(exc), _RETRY_AFTER_SUBSCRIBE_S)
            return _refuse(gw, refused, cors or {})
        response = SharedHeartbeatResponse(headers=cors or {}, sep="\n")
        started = time.monotonic()
        reason = CloseReason.CLIENT_GONE
        try:
            await _open(request, gw, stream, response)
            reason = await stream.run()
        except ConnectionError:
            pass  # the client left before or while the stream opened: client_gone
        finally:
            gw.hub.detach(stream.merchant_id, stream)  # a no-op when never attached
            _closed(gw, stream, stream.close_reason or reason, started)
            gw.broker.release(merchant.id)
        return response
    finally:
        gw.admission.leave(stream)


async def _open(
    request: web.Request, gw: Gateway, stream: Stream, response: SharedHeartbeatResponse
) -> None:
    """Send the headers, attach to the hub, queue a replay or snapshot, write the
    `connected` frame and bind the stream to the socket."""
    sse = gw.cfg.sse
    response.headers["Cache-Control"] = "no-cache, no-transform"
    last_id = request.headers.get("Last-Event-ID") or _query(request).get("lastEventId")
    writer = await response.prepare(request)
    response.headers.clear()  # sent: nothing reads them again (~1.5 KB kept per stream)
    stream_only(request.protocol)  # no next request on this connection: nothing kept for one
    held, gap = gw.hub.attach(stream.merchant_id, stream, last_id)
    replayed = 0
    if last_id:
        resumed = await gw.replay.resume(stream, last_id, held, gap)
        gap, replayed = resumed is None, resumed or 0
    first = [Control("resync", {"reason": "history_gap"})] if gap else []
    if gap:
        gw.metrics.replay_misses += 1
    elif last_id:
        gw.metrics.replay_hits += 1
    # no Last-Event-ID, or one that cannot be replayed: the job state comes first
    wants_snapshot = sse.snapshot and (gap or not last_id)
    if not (wants_snapshot and await gw.snapshots.open(stream, first)) and first:
        stream.put_first(first)  # resync before what queued meanwhile
    connected = {"merchantId": stream.merchant_id, "shop": stream.shop}
    await response.write(control_frame("connected", connected, retry_ms=sse.retry_ms))
    socket = payload_writer(writer)  # RuntimeError if aiohttp renamed what we use
    stream.bind(socket, chunked=socket.chunked)
    gw.metrics.streams_opened += 1
    if log.isEnabledFor(logging.INFO) and STREAM_LINES.allow(_OPEN_LINE, stream.merchant_id):
        log.info(_OPEN_LINE, stream.merchant_id, stream.shop, stream.client, replayed)


def _closed(gw: Gateway, stream: Stream, reason: CloseReason, started: float) -> None:
    gw.metrics.closed(reason)
    if log.isEnabledFor(logging.INFO) and STREAM_LINES.allow(_CLOSE_LINE, stream.merchant_id):
        log.info(_CLOSE_LINE, stream.merchant_id, stream.shop, stream.client, reason,
                 time.monotonic() - started)


async def ticket_view(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cors = _cors_headers(request, gw)
    try:
        shop = _shop(_query(request))
        if not gw.auth.enabled:
            raise Refusal(404, "tickets_disabled", "auth.session_token_secret is not set")
        try:
            gw.auth.check_session_token(_bearer(request), shop)
        except InvalidTokenError as exc:
            raise Refusal(401, "invalid_token", str(exc)) from None
        if cors is None:
            raise Refusal(403, "origin_not_allowed", "origin not allowed")
    except Refusal as refusal:
        return _refuse(gw, refusal, cors or {})
    ticket, ttl = gw.auth.issue_ticket(shop)
    return web.json_response({"ticket": ticket, "expiresIn": ttl}, headers=cors)


async def ticket_preflight(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cors = _cors_headers(request, gw)
    if not cors:
        return web.Response(status=204)
    cors.update(
        {
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        }
    )
    return web.Response(status=204, headers=cors)
