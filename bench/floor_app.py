"""The framework's floor for a new stream: a bare aiohttp streaming handler.

No merchant, no Redis, no hub, no log line: the handler prepares a
`StreamResponse` with the gateway's headers, writes one frame (the shape of
the gateway's `connected`) and holds the stream open. Served the way the
gateway serves (uvloop, no access log, handler cancelled when the client
leaves, backlog 4096), so what the gateway spends above it is the gateway's.
Run: ``python -m bench.floor_app --port P``.
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


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_app")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application()
    app.router.add_get("/api/realtime/events", events)
    app.router.add_get("/health/live", lambda _r: web.Response(text="ok"))
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, backlog=4096,
                handler_cancellation=True, print=None, loop=loop)


if __name__ == "__main__":
    main()
