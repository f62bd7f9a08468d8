"""The load client's building blocks: one SSE stream protocol and its counters."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Coroutine
from typing import Any

__all__ = ["Stats", "Stream", "cpu_seconds", "expected_count", "raise_nofile", "response_head",
           "run_client"]

T_KEY = b'"t":'


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_client(main: Coroutine[Any, Any, None]) -> None:
    """Run a load client's command loop: on uvloop (as the gateway runs) when installed."""
    raise_nofile()
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover
        asyncio.run(main)


def response_head(buf: bytes) -> tuple[str, float, int] | None:
    """(status, Retry-After seconds or 0, index of the body) once the head is in ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    retry_after = 0.0
    k = buf.lower().find(b"retry-after:", 0, end)
    if k >= 0:
        with contextlib.suppress(ValueError):
            retry_after = float(buf[k + 12 : buf.find(b"\r\n", k)])
    return buf[9:12].decode("latin-1", "replace"), retry_after, end + 4


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def expected_count(per_merchant: list[int], first: int, n: int) -> int:
    """Deliveries due to this process for messages ``first..first+n-1`` (message k -> k % M)."""
    m = len(per_merchant)
    if m == 0 or n <= 0:
        return 0
    full, rest = divmod(n, m)
    total = full * sum(per_merchant)
    start = first % m
    for j in range(rest):
        total += per_merchant[(start + j) % m]
    return total


class Stats:
    __slots__ = ("closed", "delivered", "last_recv", "latencies", "parse_errors", "ready", "status")

    def __init__(self) -> None:
        self.ready = 0
        self.closed = 0
        self.delivered = 0
        self.parse_errors = 0
        self.latencies: list[int] = []
        self.last_recv = 0
        self.status: dict[str, int] = {}


class Stream(asyncio.Protocol):
    """One SSE stream: counts frames carrying ``"t":`` and records latency."""

    __slots__ = ("buf", "done", "headers_done", "is_ready", "request", "retry_after", "stats",
                 "transport", "wait_frame")

    def __init__(self, request: bytes, stats: Stats, wait_frame: bool) -> None:
        self.request = request
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.retry_after = 1.0
        self.stats = stats
        self.wait_frame = wait_frame
        self.buf = b""
        self.headers_done = False
        self.is_ready = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_ready:
            self.stats.closed += 1
        elif not self.done.done():
            self.done.set_result("lost")
        self.transport = None

    def _mark_ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.stats.ready += 1
            if not self.done.done():
                self.done.set_result("ready")

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.headers_done:
            head = response_head(buf)
            if head is None:
                self.buf = buf
                return
            status, retry_after, body = head
            st = self.stats.status
            st[status] = st.get(status, 0) + 1
            if status != "200":
                self.buf = b""
                self.retry_after = retry_after or self.retry_after
                if not self.done.done():
                    self.done.set_result(status)
                if self.transport is not None:
                    self.transport.close()
                return
            self.headers_done = True
            if not self.wait_frame:
                self._mark_ready()
            buf = buf[body:]
        # a frame ends with an empty line: "\n\n" or "\r\n\r\n" (aiohttp-sse)
        end = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :].lstrip(b"\n")
        if not self.is_ready:
            self._mark_ready()
        i = buf.find(T_KEY, 0, end)
        if i < 0:
            return
        stats = self.stats
        lat = stats.latencies
        n = 0
        while i >= 0:
            j = buf.find(b",", i + 4)
            try:
                lat.append(now - int(buf[i + 4 : j]))
                n += 1
            except ValueError:
                stats.parse_errors += 1
            i = buf.find(T_KEY, j, end)
        stats.delivered += n
        stats.last_recv = now
