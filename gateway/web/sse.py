"""aiohttp-sse's response, without its ping task per stream, headers sent with the first frame.

The gateway pings every stream from one timer (app.py's heartbeat job): a task per
stream costs its creation, a loop turn and about 1 KB. aiohttp-sse starts
`_ping()` as a task in `prepare()`; `SharedHeartbeatResponse.prepare` does what
aiohttp-sse's does (the GET check, `TCP_USER_TIMEOUT`, aiohttp's prepare,
chunked encoding) without starting it, and stands a finished future in for the
task, so aiohttp-sse's `is_connected()`, `wait()` and `stop_streaming()` answer
as they do once a ping task has ended. It also buffers the headers until the
first write (aiohttp's `Response` does the same), so a stream's headers and its
`connected` frame leave in one write, not two; nothing is written between them.

These are the places that rely on aiohttp-sse's and aiohttp's internals. If
an upgrade renames what is used here, importing this module fails loudly (and
tests/test_library_adapters.py holds both libraries' code to what this
replicates) instead of every stream silently gaining a second heartbeat.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import cast

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest, StreamResponse
from aiohttp.web_exceptions import HTTPMethodNotAllowed
from aiohttp_sse import EventSourceResponse

__all__ = ["SharedHeartbeatResponse"]

if not inspect.iscoroutinefunction(getattr(EventSourceResponse, "_ping", None)) or not callable(
    getattr(EventSourceResponse, "_set_tcp_user_timeout", None)
):
    raise ImportError(
        "aiohttp-sse no longer has EventSourceResponse._ping or _set_tcp_user_timeout: "
        "update gateway/web/sse.py"
    )
if not isinstance(getattr(StreamResponse, "_send_headers_immediately", None), bool):
    raise ImportError(
        "aiohttp no longer has StreamResponse._send_headers_immediately: "
        "update gateway/web/sse.py"
    )

_finished: asyncio.Future[None] | None = None


def _finished_ping() -> asyncio.Task[None]:
    """One finished future, shared: what aiohttp-sse reads of a ping task that ended."""
    global _finished
    if _finished is None:
        _finished = asyncio.get_running_loop().create_future()
        _finished.set_result(None)
    return cast("asyncio.Task[None]", _finished)


class SharedHeartbeatResponse(EventSourceResponse):
    """An SSE response whose heartbeat is sent by the gateway's shared timer."""

    _send_headers_immediately = False  # with the first frame, in one write

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        if not self._allow_all_methods and request.method != "GET":
            raise HTTPMethodNotAllowed(request.method, ("GET",))
        self._set_tcp_user_timeout(request)
        writer = await StreamResponse.prepare(self, request)
        self._ping_task = _finished_ping()  # no task: the shared timer pings
        self.enable_chunked_encoding()
        return writer

    async def _ping(self) -> None:
        return
