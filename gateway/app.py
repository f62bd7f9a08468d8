"""create_app(config): the parts wired together, routes, lifecycle, shutdown.

The app runs periodic jobs, each a supervised background loop (runtime/supervision.py):

- heartbeat: one timer pings every open stream (not one sleeping task per stream);
- recheck: re-verifies merchants with open streams, closes revoked ones;
- dependencies: pings PostgreSQL, which also opens the pool to `pool_min` at start
  without blocking start-up on it;
- metrics: moves hot-path counts into prometheus-client once a second;
- gc policy: keeps garbage-collection pauses short (runtime/gc_policy.py);
- loop lag: how late the event loop runs, for deadlines (runtime/deadlines.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from aiohttp import web

from .access.admission import Admission
from .access.auth import Authenticator
from .access.merchants import MerchantDirectory
from .broker import RedisBroker
from .broker.connection import make_client, make_cluster_client
from .config import Config
from .durable.api import PUBLISH_API, PublishApi, publish_view
from .durable.envelopes import EnvelopeCheck, merchant_flush
from .durable.gate import PUBLISHING, PublishGate
from .durable.history import DurableHistory, publisher_settings
from .durable.replay import DurableReplay
from .durable.snapshots import Snapshots
from .errors import UnavailableError
from .fanout.frames import Control
from .fanout.hub import Hub
from .fanout.stream import Stream
from .fanout.stream_policy import CloseReason
from .handlers import stream_view, ticket_preflight, ticket_view
from .health import health_view, live_view, metrics_view, ready_view
from .logs import flush_suppressed
from .metrics import Metrics
from .resyncs import Resyncs
from .runtime import deadlines
from .runtime.gc_policy import run_gc_policy
from .runtime.supervision import stop_tasks, supervised
from .state import GATEWAY, Gateway

__all__ = ["begin_draining", "create_app", "start_jobs"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_RELEASE_RESERVE_S = 2.0  # of shutdown_timeout, kept for closing Redis and PostgreSQL
_HISTORY_POOL_SIZE = 4  # publish API and replay reads: bounded, never per client
_LOG_SUMMARY_EVERY_S = 5.0
_METRICS_SYNC_S = 1.0
_POSTGRES_PING_S = 2.0
_PINGS_PER_SLICE = 200
_MAX_SLICES = 100


def create_app(cfg: Config) -> web.Application:
    app = web.Application()
    make = make_cluster_client if cfg.redis.cluster else make_client
    redis_client = make(cfg.redis.url, _HISTORY_POOL_SIZE)
    envelopes = EnvelopeCheck(redis_client, cfg.redis.events)

    history = DurableHistory(redis_client, **publisher_settings(cfg))
    hub = Hub(history=cfg.sse.history, coalesce=frozenset(cfg.sse.coalesce), verify=envelopes,
              on_missed=lambda ids: resyncs.missed(ids), on_lost=history.remember_lost)
    metrics = Metrics(max_connections=cfg.sse.max_connections)

    app.on_cleanup.append(lambda _: envelopes.close())
    broker = RedisBroker(
        cfg.redis, hub, metrics, linger_s=cfg.sse.linger,
        on_resync=lambda ids: resyncs.resync(ids), on_live=lambda ids: resyncs.live_again(ids),
    )
    flush = merchant_flush(lambda: broker.round_trip(shared=True), envelopes, hub)
    snapshots = Snapshots(history, flush, hub, metrics, job_key=cfg.sse.job_key,
                          jobs_kept=cfg.sse.snapshot_jobs)
    resyncs = Resyncs(hub, snapshots if cfg.sse.snapshot else None)
    app[GATEWAY] = Gateway(
        cfg=cfg,
        hub=hub,
        broker=broker,
        directory=MerchantDirectory(cfg.postgres, cfg.server.max_new_streams_per_s),
        auth=Authenticator(cfg.auth),
        admission=Admission(cfg),
        metrics=metrics,
        history=history,
        replay=DurableReplay(history, flush, hub, metrics),
        snapshots=snapshots,
    )
    app[PUBLISH_API] = PublishApi(cfg.auth.publish_key, cfg.server.body_timeout,
                                  cfg.redis.events, history, metrics, cfg.sse.job_key)
    app[PUBLISHING] = PublishGate(
        broker.backlog_bytes, lambda: broker.round_trip(shared=True), metrics
    )
    _add_routes(app.router, cfg)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


def _add_routes(router: web.UrlDispatcher, cfg: Config) -> None:
    path = cfg.server.path
    router.add_get(path, stream_view, allow_head=False)
    router.add_post(f"{path}/ticket", ticket_view)
    router.add_route("OPTIONS", f"{path}/ticket", ticket_preflight)
    router.add_post(f"{path}/publish", publish_view)
    router.add_get("/health", health_view)
    router.add_get("/health/ready", ready_view)
    router.add_get("/health/live", live_view)
    router.add_get("/metrics", metrics_view)
    if cfg.server.demo:
        router.add_get("/demo", _demo_redirect)
        router.add_get("/demo/", _demo_index)
        router.add_static("/demo/", STATIC_DIR)


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
    await gw.snapshots.close()
    await gw.history.close()
    await gw.broker.close()
    await gw.directory.close()
    log.info("redis and postgres released")


async def _summarise_logs() -> None:
    """Report counts of rate-limited log lines whose window ended without a repeat."""
    while True:
        await asyncio.sleep(_LOG_SUMMARY_EVERY_S)
        flush_suppressed()


def begin_draining(app: web.Application) -> None:
    """Readiness 503 and new streams refused, before the listener closes (once)."""
    gw = app[GATEWAY]
    if not gw.draining:
        gw.draining = True  # the only place
        log.info("draining: readiness is now 503")


async def _on_shutdown(app: web.Application) -> None:
    """Tell every stream to go; cut those that cannot hear it in time."""
    gw = app[GATEWAY]
    begin_draining(app)  # serve() did already; an app run otherwise drains too
    count = gw.admission.close_all()
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


def start_jobs(gw: Gateway) -> list[asyncio.Task[None]]:
    return [
        supervised("metrics-sync", lambda: _sync_metrics(gw)),
        supervised("merchant-recheck", lambda: _recheck_merchants(gw)),
        supervised("postgres-watch", lambda: _watch_postgres(gw)),
        supervised("heartbeat", lambda: _heartbeat(gw)),
        supervised("gc-policy", run_gc_policy),
        supervised("loop-lag", deadlines.track_lag),
    ]


async def _sync_metrics(gw: Gateway) -> None:
    while True:
        await asyncio.sleep(_METRICS_SYNC_S)
        gw.sync_metrics()


async def _watch_postgres(gw: Gateway) -> None:
    """Keep `postgres up` current without traffic; the first ping opens the pool."""
    while True:
        try:
            await gw.directory.ping()
        except UnavailableError:
            pass  # MerchantDirectory logs the transition once
        await asyncio.sleep(_POSTGRES_PING_S)


async def _heartbeat(gw: Gateway) -> None:
    """Ping every open stream once per `sse.heartbeat`.

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
        await _recheck_once(gw)


async def _recheck_once(gw: Gateway) -> None:
    shops = {(s.merchant_id, s.shop) for s in gw.admission.streams()}
    for merchant_id, shop in shops:
        try:
            now = await gw.directory.recheck(shop)
        except UnavailableError:
            continue  # PostgreSQL cannot tell: keep serving
        if now is not None and now.id == merchant_id:
            continue
        # gone, inactive, or the shop now belongs to another merchant id
        revoked = [s for s in gw.admission.merchant_streams(merchant_id) if s.shop == shop]
        log.info("revoked merchant=%s shop=%s streams=%d", merchant_id, shop, len(revoked))
        for stream in revoked:
            stream.close(CloseReason.REVOKED, Control("revoked", {"reason": "revoked"}))
        gw.metrics.revocations += len(revoked)
