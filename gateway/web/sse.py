"""aiohttp-sse's response, without its ping task per stream.

The gateway pings every stream from one timer (app.py's heartbeat job): a sleeping task per
stream costs about 1 KB each. aiohttp-sse starts `_ping()` in `prepare()`;
this is the one place that relies on that private method. If an aiohttp-sse
upgrade renames it, importing this module fails loudly (and so does
tests/test_library_adapters.py) instead of every stream silently gaining a
second heartbeat.
"""

from __future__ import annotations

import inspect

from aiohttp_sse import EventSourceResponse

__all__ = ["SharedHeartbeatResponse"]

if not inspect.iscoroutinefunction(getattr(EventSourceResponse, "_ping", None)):
    raise ImportError(
        "aiohttp-sse no longer has EventSourceResponse._ping: update gateway/web/sse.py"
    )


class SharedHeartbeatResponse(EventSourceResponse):
    """An SSE response whose heartbeat is sent by the gateway's shared timer."""

    async def _ping(self) -> None:
        return
