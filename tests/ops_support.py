# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""Helpers of the fault, health and shutdown end-to-end tests.

    status, body, elapsed = await get_health(gw)
    m = await get_metrics(gw);  metric(m, "gateway_refusals_total", code="unavailable")
    raw = await RawStream.open("127.0.0.1", port, "/api/realtime/events?shop=...")

``RawStream`` is a lean asyncio socket reader for the many-streams tests: it
keeps the bytes it received and can wait for a marker or for EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

__all__ = [
    "RawStream",
    "Timeline",
    "get_health",
    "get_metrics",
    "metric",
    "parse_metrics",
    "poll",
]


async def get_health(gw: Any, path: str = "/health", timeout: float = 10) -> tuple[int, Any, float]:
    """GET ``path`` on a fresh connection: (status, JSON body or text, seconds taken)."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(force_close=True),
        ) as session,
        session.get(gw.url(path)) as resp,
    ):
        text = await resp.text()
        elapsed = time.monotonic() - started
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, elapsed


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name' or 'name{k="v",...}': value} (labels sorted)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        key = name
        if labels:
            pairs = sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
            if pairs:
                key += "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"
        out[key] = float(value)
    return out


async def get_metrics(gw: Any) -> dict[str, float]:
    status, body, _ = await get_health(gw, "/metrics")
    assert status == 200, (status, body)
    assert isinstance(body, str)
    return parse_metrics(body)


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """One sample's value; KeyError names what was missing."""
    key = name
    if labels:
        key += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    if key not in samples:
        raise KeyError(f"{key} not in /metrics: {sorted(samples)}")
    return samples[key]


async def poll(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "",
) -> tuple[Any, float]:
    """Call ``probe`` until ``accept(result)``; (result, monotonic time accepted).

    Probe errors count as "not yet"; the last result/error is in the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
            if accept(last):
                return last, time.monotonic()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)


class Timeline:
    """Named monotonic stamps, printed as a table at the end of a test."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> float:
        self.rows.append((name, seconds))
        return seconds

    def print(self) -> None:
        print(f"\n== {self.title} ==")
        for name, seconds in self.rows:
            print(f"   {name:<44} {seconds:7.3f} s")


class RawStream:
    """One SSE response read from a plain socket (HTTP/1.1, Connection: close)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, host: str, port: int, target: str, timeout: float = 20) -> RawStream:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
        )
        return cls(reader, writer)

    async def _pump(self) -> None:
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                self.buf += chunk
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self._changed.set()

    @property
    def status(self) -> int | None:
        head = bytes(self.buf[:64])
        if not head.startswith(b"HTTP/1.1 ") or len(head) < 12:
            return None
        return int(head[9:12])

    async def wait_for(self, marker: bytes, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while marker not in self.buf:
                if self.eof:
                    raise EOFError(f"closed before {marker!r}: {bytes(self.buf[-500:])!r}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_eof(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not self.eof:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
