"""create_app(config): the parts wired together, routes, lifecycle, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from .admission import Admission
from .auth import Authenticator
from .broker import RedisBroker
from .broker.connection import make_client, make_cluster_client
from .broker.envelopes import EnvelopeCheck
from .broker.history import DurableHistory
from .config import Config
from .handlers import close_all_streams, stream_view, ticket_preflight, ticket_view
from .health import health_view, live_view, metrics_view
from .hub import Control, Hub
from .jobs import start_jobs
from .logs import flush_suppressed
from .merchants import MerchantDirectory
from .metrics import Metrics
from .publish_api import publish_view
from .publish_gate import PUBLISHING, PublishGate
from .replay import DurableReplay
from .state import GATEWAY, Gateway
from .stream import CloseReason
from .supervision import stop_tasks, supervised

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_RELEASE_RESERVE_S = 2.0  # of shutdown_timeout, kept for closing Redis and PostgreSQL
_HISTORY_POOL_SIZE = 4  # publish API and replay reads: bounded, never per client
_LOG_SUMMARY_EVERY_S = 5.0


def create_app(cfg: Config) -> web.Application:
    app = web.Application()
    make = make_cluster_client if cfg.redis.cluster else make_client
    redis_client = make(cfg.redis.url, _HISTORY_POOL_SIZE)
    envelopes = EnvelopeCheck(redis_client)
    hub = Hub(history=cfg.sse.history, coalesce=frozenset(cfg.sse.coalesce), verify=envelopes)
    metrics = Metrics(max_connections=cfg.sse.max_connections)

    def resync(merchant_ids: list[str]) -> None:
        """Messages of these merchants may have been lost (Redis reconnected or moved)."""
        hub.mark_gap(merchant_ids)
        hub.broadcast(Control("resync", {"reason": "redis_reconnected"}), merchant_ids)

    async def flush() -> float:
        """Every message published before this call has reached the hub, checked."""
        elapsed = await broker.round_trip(shared=True)
        await envelopes.settled()
        return elapsed

    app.on_cleanup.append(lambda _: envelopes.close())
    broker = RedisBroker(
        cfg.redis, hub, metrics, linger_s=cfg.sse.linger, on_resync=resync
    )
    history = DurableHistory(
        redis_client,
        channel=cfg.redis.channel,
        history=cfg.sse.history,
        ttl_s=cfg.redis.history_ttl,
        sharded=cfg.redis.cluster,
    )
    app[GATEWAY] = Gateway(
        cfg=cfg,
        hub=hub,
        broker=broker,
        directory=MerchantDirectory(cfg.postgres),
        auth=Authenticator(cfg.auth),
        admission=Admission(cfg),
        metrics=metrics,
        history=history,
        replay=DurableReplay(history, flush, hub, metrics),
    )
    app[PUBLISHING] = PublishGate(
        broker.backlog_bytes, lambda: broker.round_trip(shared=True), metrics
    )
    path = cfg.server.path
    app.router.add_get(path, stream_view, allow_head=False)
    app.router.add_post(f"{path}/ticket", ticket_view)
    app.router.add_route("OPTIONS", f"{path}/ticket", ticket_preflight)
    app.router.add_post(f"{path}/publish", publish_view)
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
    tasks = [*start_jobs(gw), supervised("log-summaries", _summarise_logs)]
    yield
    await stop_tasks(tasks)
    flush_suppressed(final=True)
    await gw.replay.close()
    await gw.history.close()
    await gw.broker.close()
    await gw.directory.close()
    log.info("redis and postgres released")


async def _summarise_logs() -> None:
    """Report counts of rate-limited log lines whose window ended without a repeat."""
    while True:
        await asyncio.sleep(_LOG_SUMMARY_EVERY_S)
        flush_suppressed()


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
