"""create_app(config): the parts wired together, routes, background tasks, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from aiohttp import web

from .admission import Admission
from .auth import Authenticator
from .broker import RedisBroker
from .config import Config
from .gc_policy import run_gc_policy
from .handlers import close_all_streams, stream_view, ticket_preflight, ticket_view
from .health import health_view, live_view, metrics_view
from .hub import Control, Hub
from .merchants import MerchantDirectory
from .metrics import Metrics
from .state import GATEWAY, Gateway
from .stream import CloseReason, Stream

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_METRICS_SYNC_S = 1.0
_RELEASE_RESERVE_S = 2.0  # of shutdown_timeout, kept for closing Redis and PostgreSQL
_PINGS_PER_SLICE = 200
_MAX_SLICES = 100


def create_app(cfg: Config) -> web.Application:
    app = web.Application()
    hub = Hub(history=cfg.sse.history)
    metrics = Metrics()

    def on_redis_reconnect() -> None:
        hub.mark_gap()
        hub.broadcast(Control("resync", {"reason": "redis_reconnected"}))

    app[GATEWAY] = Gateway(
        cfg=cfg,
        hub=hub,
        broker=RedisBroker(
            cfg.redis, hub, metrics, linger_s=cfg.sse.linger, on_reconnect=on_redis_reconnect
        ),
        directory=MerchantDirectory(cfg.postgres),
        auth=Authenticator(cfg.auth),
        admission=Admission(cfg),
        metrics=metrics,
    )
    path = cfg.server.path
    app.router.add_get(path, stream_view, allow_head=False)
    app.router.add_post(f"{path}/ticket", ticket_view)
    app.router.add_route("OPTIONS", f"{path}/ticket", ticket_preflight)
    app.router.add_get("/health", health_view)
    app.router.add_get("/health/live", live_view)
    app.router.add_get("/metrics", metrics_view)
    if cfg.server.demo:
        app.router.add_get("/demo", _demo_redirect)
        app.router.add_get("/demo/", _demo_index)
        app.router.add_static("/demo/", STATIC_DIR)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _demo_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/demo/")


async def _demo_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "demo.html")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.broker.start()
    tasks = [
        asyncio.create_task(_sync_metrics(gw), name="metrics-sync"),
        asyncio.create_task(_recheck_merchants(gw), name="merchant-recheck"),
        asyncio.create_task(_heartbeat(gw), name="heartbeat"),
        asyncio.create_task(run_gc_policy(), name="gc-policy"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await gw.broker.close()
    await gw.directory.close()
    log.info("redis and postgres released")


async def _on_shutdown(app: web.Application) -> None:
    """Tell every stream to go; cut those that cannot hear it in time."""
    gw = app[GATEWAY]
    gw.draining = True
    count = len(gw.admission)
    close_all_streams(gw)
    log.info("shutdown: %d streams told to reconnect elsewhere", count)
    budget = max(0.5, gw.cfg.server.shutdown_timeout - _RELEASE_RESERVE_S)
    try:
        async with asyncio.timeout(budget):
            await gw.admission.empty.wait()
    except TimeoutError:
        stuck = list(gw.admission.streams())
        log.warning("shutdown: cutting %d streams that did not drain", len(stuck))
        for stream in stuck:
            stream.close(CloseReason.DRAIN_TIMEOUT)


async def _sync_metrics(gw: Gateway) -> None:
    while True:
        await asyncio.sleep(_METRICS_SYNC_S)
        gw.sync_metrics()


async def _heartbeat(gw: Gateway) -> None:
    """One timer pings every open stream (not one sleeping task per stream).

    Each round is spread over the interval in slices of at most `_PINGS_PER_SLICE`
    streams, so 10,000 pings never stall the loop (and delivery) in one go.
    """
    interval = gw.cfg.sse.heartbeat
    while True:
        streams = list(gw.admission.streams())
        slices = max(1, min(_MAX_SLICES, -(-len(streams) // _PINGS_PER_SLICE)))
        for index in range(slices):
            await asyncio.sleep(interval / slices)
            _ping(streams[index::slices])
        _ping(set(gw.admission.streams()).difference(streams))  # opened during the round


def _ping(streams: Iterable[Stream]) -> None:
    for stream in streams:
        if stream.close_reason is None and stream.bound:
            stream.ping()


async def _recheck_merchants(gw: Gateway) -> None:
    """Re-verify merchants with open streams; close the streams of revoked ones."""
    interval = gw.cfg.postgres.recheck
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await _recheck_once(gw)
        except Exception:  # a bug or a broken query: loud, and tried again next round
            log.exception("merchant recheck failed")


async def _recheck_once(gw: Gateway) -> None:
    shops = {(s.merchant_id, s.shop) for s in gw.admission.streams()}
    for merchant_id, shop in shops:
        if await gw.directory.recheck(shop) is not False:
            continue  # still valid, or PostgreSQL cannot tell: keep serving
        revoked = [s for s in gw.admission.merchant_streams(merchant_id) if s.shop == shop]
        log.info("revoked merchant=%s shop=%s streams=%d", merchant_id, shop, len(revoked))
        for stream in revoked:
            stream.close(CloseReason.REVOKED, Control("revoked", {"reason": "revoked"}))
        gw.metrics.revocations += len(revoked)
