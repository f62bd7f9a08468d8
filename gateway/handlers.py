"""HTTP views of the stream and its ticket; the only place domain errors become refusals."""

from __future__ import annotations

import ipaddress
import logging
import random
import re
import time

from aiohttp import web

from .errors import InvalidTokenError, UnavailableError, UnknownMerchantError
from .frames import control_frame
from .hub import Control
from .logs import sampled
from .merchants import Merchant
from .state import GATEWAY, Gateway
from .stream import CloseReason, Stream
from .web.sse import SharedHeartbeatResponse
from .web.writer import payload_writer

__all__ = ["client_address", "close_all_streams", "stream_view", "ticket_preflight", "ticket_view"]

log = logging.getLogger(__name__)

SHOP_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,61}\.myshopify\.com")


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


def client_address(request: web.Request, gw: Gateway) -> str:
    """The peer, or the nearest untrusted X-Forwarded-For hop when the peer is a proxy."""
    peer = request.remote or "-"
    trusted = gw.trusted_networks
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")
    hops = [peer] + [h.strip() for h in reversed(forwarded) if h.strip()]
    for hop in hops:
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return "invalid"  # not an address: never log what the client wrote there
        if not any(address in net for net in trusted):
            return hop
    return hops[-1]


def _cors_headers(request: web.Request, gw: Gateway) -> dict[str, str] | None:
    """CORS response headers; None when the Origin is not allowed."""
    allowed = gw.cfg.cors.allow_origins
    origin = request.headers.get("Origin")
    if not allowed or origin is None:
        return {}
    if "*" in allowed or origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return None


def _shop(request: web.Request) -> str:
    shop = request.query.get("shop", "")
    if not SHOP_PATTERN.fullmatch(shop):
        raise Refusal(400, "invalid_shop", "shop must be a *.myshopify.com domain")
    return shop


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _authenticate(request: web.Request, gw: Gateway, shop: str) -> None:
    if not gw.auth.enabled:
        return
    try:
        ticket = request.query.get("ticket")
        if ticket:
            gw.auth.check_ticket(ticket, shop)
        else:
            gw.auth.check_session_token(request.query.get("token") or _bearer(request), shop)
    except InvalidTokenError as exc:
        raise Refusal(401, "invalid_token", str(exc)) from None


async def _admit(request: web.Request, gw: Gateway, cors: dict[str, str] | None) -> Merchant:
    """Run the refusal table (README.md, "The stream") in order; the first row that applies wins."""
    shop = _shop(request)
    _authenticate(request, gw, shop)
    merchant: Merchant | None = None
    unavailable: str | None = None
    if gw.directory.needs_query(shop) and not gw.admission.rate.take():
        unavailable = "too many new streams; retry shortly"
    else:
        try:
            merchant = await gw.directory.verify(shop)
        except UnknownMerchantError as exc:
            raise Refusal(403, "unknown_merchant", str(exc)) from None
        except UnavailableError as exc:
            unavailable = str(exc)
    if cors is None:
        raise Refusal(403, "origin_not_allowed", "origin not allowed")
    if merchant is not None and gw.admission.merchant_full(merchant.id):
        raise Refusal(429, "too_many_connections", "too many streams for this merchant", 5)
    if unavailable is None:
        if gw.draining:
            unavailable = "shutting down"
        elif gw.admission.process_full():
            unavailable = "connection limit reached"
        elif not gw.broker.healthy:
            unavailable = "Redis is unavailable"
    if unavailable is not None or merchant is None:
        raise Refusal(503, "unavailable", unavailable or "unavailable", random.randint(1, 5))
    return merchant


async def stream_view(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    cors = _cors_headers(request, gw)
    try:
        merchant = await _admit(request, gw, cors)
    except Refusal as refusal:
        return _refuse(gw, refusal, cors or {})
    client = client_address(request, gw)
    stream = Stream(merchant.id, merchant.shop, client, gw.queue_policy, gw.metrics)
    gw.admission.enter(stream)
    try:
        try:
            await gw.broker.acquire(merchant.id)
        except UnavailableError as exc:
            return _refuse(gw, Refusal(503, "unavailable", str(exc), 2), cors or {})
        try:
            return await _serve(request, gw, stream, cors or {})
        finally:
            gw.broker.release(merchant.id)
    finally:
        gw.admission.leave(stream)


async def _serve(
    request: web.Request, gw: Gateway, stream: Stream, cors: dict[str, str]
) -> web.StreamResponse:
    sse = gw.cfg.sse
    response = SharedHeartbeatResponse(headers=cors, sep="\n")
    response.headers["Cache-Control"] = "no-cache, no-transform"
    last_id = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    started = time.monotonic()
    reason = CloseReason.CLIENT_GONE
    attached = False
    try:
        writer = await response.prepare(request)
        held, gap = gw.hub.attach(stream.merchant_id, stream, last_id)
        attached = True
        replayed = 0
        if last_id:
            resumed = await gw.replay.resume(stream, last_id, held, gap)
            gap, replayed = resumed is None, resumed or 0
        if gap:
            gw.metrics.replay_misses += 1
            stream.deliver(Control("resync", {"reason": "history_gap"}))
        elif last_id:
            gw.metrics.replay_hits += 1
        connected = {"merchantId": stream.merchant_id, "shop": stream.shop}
        await response.write(control_frame("connected", connected, retry_ms=sse.retry_ms))
        socket = payload_writer(writer)  # RuntimeError if aiohttp renamed what we use
        stream.bind(socket, chunked=socket.chunked)
        gw.metrics.streams_opened += 1
        log.info(
            "stream open merchant=%s shop=%s client=%s replayed=%d",
            stream.merchant_id, stream.shop, stream.client, replayed,
            extra=sampled(f"merchant={stream.merchant_id}"),
        )
        reason = await stream.run()
    except ConnectionError:
        pass  # the client left before or while the stream opened: client_gone
    finally:
        if attached:
            gw.hub.detach(stream.merchant_id, stream)
        final = stream.close_reason or reason
        gw.metrics.closed(final)
        log.info(
            "stream close merchant=%s shop=%s client=%s reason=%s duration_s=%.1f",
            stream.merchant_id, stream.shop, stream.client, final,
            time.monotonic() - started, extra=sampled(f"merchant={stream.merchant_id}"),
        )
    return response


def close_all_streams(gw: Gateway) -> None:
    """Shutdown: every stream gets `shutdown` with a retry spread over the drain window."""
    window_ms = int(gw.cfg.server.shutdown_timeout * 1000)
    low = min(gw.cfg.sse.retry_ms, window_ms)
    for stream in gw.admission.streams():
        final = Control("shutdown", {"reason": "shutdown"}, retry_ms=random.randint(low, window_ms))
        stream.close(CloseReason.SHUTDOWN, final)


async def ticket_view(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cors = _cors_headers(request, gw)
    try:
        shop = _shop(request)
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
