"""The framework's floor for a new stream: a bare aiohttp streaming handler.

No merchant, no Redis, no hub, no log line: the handler prepares a
`StreamResponse` with the gateway's headers, writes one frame (the shape of
the gateway's `connected`) and holds the stream open. Served the way the
gateway serves (uvloop, no access log, handler cancelled when the client
leaves, backlog 4096), so what the gateway spends above it is the gateway's.
Run: ``python -m bench.floor_app --port P``. With ``--low-level`` the same handler
runs on aiohttp's low-level server (``web.Server``: no application, router,
middlewares or signals): the floor of any gateway that keeps aiohttp's HTTP layer.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

SUFFIX = ".myshopify.com"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


async def events(request: web.Request) -> web.StreamResponse:
    shop = request.query.get("shop", "")
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    await response.write(
        b'retry: 3000\nevent: connected\ndata: {"merchantId":"%s","shop":"%s"}\n\n'
        % (shop.removesuffix(SUFFIX).encode(), shop.encode())
    )
    await asyncio.get_running_loop().create_future()  # held until the client leaves
    return response


async def low_level(request: web.BaseRequest) -> web.StreamResponse:
    """The low-level server's one handler: the stream, else the liveness answer."""
    if request.path == "/api/realtime/events":
        return await events(request)  # type: ignore[arg-type]
    return web.Response(text="ok")


async def serve_low_level(port: int) -> None:
    server = web.Server(low_level, access_log=None, handler_cancellation=True)
    loop = asyncio.get_running_loop()
    await loop.create_server(server, "127.0.0.1", port, backlog=4096)
    await loop.create_future()  # until the process is stopped


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--low-level", action="store_true", help="aiohttp's low-level server")
    args = p.parse_args()
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if args.low_level:
        loop.run_until_complete(serve_low_level(args.port))
        return
    app = web.Application()
    app.router.add_get("/api/realtime/events", events)
    app.router.add_get("/health/live", lambda _r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, backlog=4096,
                handler_cancellation=True, print=None, loop=loop)


if __name__ == "__main__":
    main()
