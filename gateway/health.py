"""/health (every dependency, with a delivery round trip), /health/ready (what a load
balancer should route on: PostgreSQL not required), /health/live and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .durable.gate import PUBLISHING, PublishGate
from .state import GATEWAY

__all__ = ["health_view", "live_view", "metrics_view", "ready_view"]

_PROBE_TIMEOUT_S = 1.5  # the whole answer stays under the documented 2 s


async def _probe(check: Callable[[], Awaitable[float]], ready: bool = True) -> dict[str, Any]:
    if not ready:
        return {"status": "fail", "latency_ms": None, "error": "reconnecting"}
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            latency = await check()
    except TimeoutError:
        return {"status": "fail", "latency_ms": None, "error": "timeout"}
    except Exception as exc:  # any failure is the answer here, named by type only
        return {"status": "fail", "latency_ms": None, "error": type(exc).__name__}
    return {"status": "ok", "latency_ms": round(latency, 2)}


async def health_view(request: web.Request) -> web.Response:
    """200 when Redis, the delivery round trip and PostgreSQL are all ok."""
    return await _health(request, needs_postgres=True)


async def ready_view(request: web.Request) -> web.Response:
    """/health without PostgreSQL in the verdict once it has answered: verified shops
    are served from the cache while it is down, and its outage hits every instance
    alike, so taking them all out of a load balancer would only turn it into 503s
    everywhere. A process it never answered has no cache to serve from: not ready."""
    ever = request.app[GATEWAY].directory.ever_answered
    return await _health(request, needs_postgres=not ever)


async def _health(request: web.Request, needs_postgres: bool) -> web.Response:
    gw = request.app[GATEWAY]
    redis, postgres, delivery = await asyncio.gather(
        _probe(gw.broker.ping),
        _probe(gw.directory.ping),
        _probe(gw.broker.round_trip, ready=gw.broker.healthy),
    )
    required = (redis, postgres, delivery) if needs_postgres else (redis, delivery)
    ok = all(p["status"] == "ok" for p in required) and not gw.draining
    if gw.cfg.redis.cluster:
        redis["nodes"] = {node: "ok" if up else "fail" for node, up in gw.broker.nodes().items()}
        ok = ok and bool(redis["nodes"]) and all(v == "ok" for v in redis["nodes"].values())
    body = {
        "status": "ok" if ok else "fail",
        "redis": redis,
        "postgres": postgres,
        "delivery": delivery,
        "connections": len(gw.admission),
        "merchants": gw.broker.merchants,
        "uptime_s": round(time.monotonic() - gw.started_at, 1),
        "version": __version__,
    }
    if request.app.get(PUBLISHING) is not None:
        body["publish"] = _publishing(request.app[PUBLISHING])
    if gw.draining:
        body["draining"] = True
    return web.json_response(body, status=200 if ok else 503)


def _publishing(gate: PublishGate) -> dict[str, Any]:
    """Durable publishing: "fail" with Redis's last refusal (`redis_oom`: Redis is over
    maxmemory) until a publish succeeds; readiness does not depend on it."""
    if gate.failing is None:
        return {"status": "ok"}
    since = round(time.monotonic() - gate.failing_since, 1)
    return {"status": "fail", "error": gate.failing, "since_s": since}


async def live_view(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    gw.sync_metrics()
    response = web.Response(body=gw.metrics.render())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
