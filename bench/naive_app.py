"""The naive design the gateway replaces: one Redis pub/sub connection per stream.

aiohttp + aiohttp-sse; ``m{i}.myshopify.com`` maps to merchant ``m{i}`` (no DB).
Run: ``python -m bench.naive_app --port P --redis-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_sse import sse_response

SUFFIX = ".myshopify.com"


async def events(request: web.Request) -> web.StreamResponse:
    shop = request.query.get("shop", "")
    if not shop.endswith(SUFFIX):
        raise web.HTTPBadRequest(text="invalid_shop")
    merchant = shop[: -len(SUFFIX)]
    r = aioredis.Redis.from_url(request.app["redis_url"])
    pubsub = r.pubsub()
    await pubsub.subscribe(f"merchant:{merchant}:progress")
    try:
        async with sse_response(request) as sse:
            await sse.send(f'{{"merchantId": "{merchant}", "shop": "{shop}"}}', event="connected")
            async for msg in pubsub.listen():
                if msg["type"] == "message":
                    await sse.send(msg["data"].decode(), event="progress")
    finally:
        await pubsub.aclose()
        await r.aclose()
    return sse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url", required=True)
    args = p.parse_args()
    app = web.Application()
    app["redis_url"] = args.redis_url
    app.router.add_get("/api/realtime/events", events)
    app.router.add_get("/health/live", lambda _r: web.Response(text="ok"))
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, backlog=4096, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
