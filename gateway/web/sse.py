"""aiohttp-sse's response, without its ping task per stream.

The gateway pings every stream from one timer (app.py's heartbeat job): a task per
stream costs its creation, a loop turn and about 1 KB. aiohttp-sse starts
`_ping()` as a task in `prepare()`; `SharedHeartbeatResponse.prepare` does what
aiohttp-sse's does (the GET check, `TCP_USER_TIMEOUT`, aiohttp's prepare,
chunked encoding) without starting it, and stands a finished future in for the
task, so aiohttp-sse's `is_connected()`, `wait()` and `stop_streaming()` answer
as they do once a ping task has ended.

The headers still leave in `prepare()`, at once, as aiohttp-sse sends them: a
stream's `200` never waits for a Redis read (snapshot or replay) behind it,
so a client (and the frozen-Redis probe in tests/test_faults_e2e.py) learns
that it was admitted even while Redis does not answer.

These are the places that rely on aiohttp-sse's internals. If an upgrade
renames what is used here, importing this module fails loudly (and
tests/test_library_adapters.py holds aiohttp-sse's prepare to what this
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

_finished: asyncio.Future[None] | None = None


def _finished_ping() -> asyncio.Task[None]:
    """One finished future, shared: what aiohttp-sse reads of a ping task that ended."""
    global _finished
    if _finished is None or _finished.get_loop() is not asyncio.get_running_loop():
        _finished = asyncio.get_running_loop().create_future()
        _finished.set_result(None)
    return cast("asyncio.Task[None]", _finished)


class SharedHeartbeatResponse(EventSourceResponse):
    """An SSE response whose heartbeat is sent by the gateway's shared timer."""

    async def _ping(self) -> None:
        return

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        if not self._allow_all_methods and request.method != "GET":
            raise HTTPMethodNotAllowed(request.method, ("GET",))
        self._set_tcp_user_timeout(request)
        writer = await StreamResponse.prepare(self, request)  # the headers leave here
        self._ping_task = _finished_ping()  # no task: the shared timer pings
        self.enable_chunked_encoding()
        return writer
