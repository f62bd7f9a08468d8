"""The gateway's periodic jobs, each a supervised background loop (see supervision.py).

- heartbeat: one timer pings every open stream (not one sleeping task per stream);
- recheck: re-verifies merchants with open streams, closes revoked ones;
- dependencies: pings PostgreSQL, which also opens the pool to `pool_min` at start
  without blocking start-up on it;
- metrics: moves hot-path counts into prometheus-client once a second;
- gc policy: keeps garbage-collection pauses short (gc_policy.py);
- loop lag: how late the event loop runs, for deadlines (patience.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from . import patience
from .errors import UnavailableError
from .gc_policy import run_gc_policy
from .hub import Control
from .state import Gateway
from .stream import CloseReason, Stream
from .supervision import supervised

__all__ = ["start_jobs"]

log = logging.getLogger(__name__)

_METRICS_SYNC_S = 1.0
_POSTGRES_PING_S = 2.0
_PINGS_PER_SLICE = 200
_MAX_SLICES = 100


def start_jobs(gw: Gateway) -> list[asyncio.Task[None]]:
    return [
        supervised("metrics-sync", lambda: _sync_metrics(gw)),
        supervised("merchant-recheck", lambda: _recheck_merchants(gw)),
        supervised("postgres-watch", lambda: _watch_postgres(gw)),
        supervised("heartbeat", lambda: _heartbeat(gw)),
        supervised("gc-policy", run_gc_policy),
        supervised("loop-lag", patience.track_lag),
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
        if await gw.directory.recheck(shop) is not False:
            continue  # still valid, or PostgreSQL cannot tell: keep serving
        revoked = [s for s in gw.admission.merchant_streams(merchant_id) if s.shop == shop]
        log.info("revoked merchant=%s shop=%s streams=%d", merchant_id, shop, len(revoked))
        for stream in revoked:
            stream.close(CloseReason.REVOKED, Control("revoked", {"reason": "revoked"}))
        gw.metrics.revocations += len(revoked)
