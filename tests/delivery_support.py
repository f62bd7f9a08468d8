"""Helpers for the delivery tests (replay, backpressure, auth e2e).

* :class:`Publisher` — one Redis connection, ``send`` / pipelined ``send_many``.
* :class:`LaggingClient` — a raw HTTP/1.1 SSE client with a tiny receive
  buffer that reads the headers and the first frame, then stops reading, so the
  gateway's transport pauses and the gateway starts queueing for it.
* :class:`CountingClient` — a cheap fast reader for large volumes: keeps the
  sequence numbers (``"n"`` in the JSON payload) of every event, not the bytes.
* :func:`dechunk` — HTTP/1.1 chunked coding of captured bytes removed (the
  events in them: ``support.parse_events``).
* :func:`metric_value`, :func:`rss_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from support import Event, parse_events

__all__ = [
    "CountingClient",
    "LaggingClient",
    "PeakRss",
    "Publisher",
    "dechunk",
    "metric_value",
    "padded",
    "rss_bytes",
    "stalled_stream",
]


def padded(n: int, size: int, **extra: Any) -> str:
    """A JSON object payload ``{"n": n, ...extra, "pad": "xxx"}`` of about ``size`` bytes."""
    head = json.dumps({"n": n, **extra})[:-1]
    pad = max(0, size - len(head) - 12)
    return f'{head}, "pad": "{"x" * pad}"}}'


class Publisher:
    """PUBLISH on ``merchant:{mid}:{event}`` over one connection."""

    def __init__(self, redis_url: str, merchant_id: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url)
        self.merchant_id = merchant_id

    def channel(self, event: str) -> str:
        return f"merchant:{self.merchant_id}:{event}"

    async def send(self, event: str, payload: Any) -> int:
        if not isinstance(payload, str | bytes):
            payload = json.dumps(payload)
        return int(await self.client.publish(self.channel(event), payload))

    async def send_many(self, items: Iterable[tuple[str, str | bytes]]) -> list[int]:
        """Pipeline many publishes in one round trip; the receiver counts."""
        pipe = self.client.pipeline(transaction=False)
        for event, payload in items:
            pipe.publish(self.channel(event), payload)
        return [int(x) for x in await pipe.execute()]

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


# -- parsing ----------------------------------------------------------------------


def dechunk(body: bytes) -> bytes:
    """Decode HTTP/1.1 chunked transfer coding; a truncated tail is kept as is."""
    out = bytearray()
    pos = 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end == -1:
            break
        size_text = body[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise AssertionError(f"bad chunk header {body[pos:end][:40]!r}") from exc
        if size == 0:
            break
        start = end + 2
        out += body[start : start + size]
        pos = start + size + 2
    return bytes(out)


# -- clients ----------------------------------------------------------------------


class LaggingClient:
    """A raw SSE client that stops reading after the first frame.

    Not support.open_stream: the point is a socket with a 4 KiB receive buffer set
    before connecting and a reader that stops pulling from it, which aiohttp does not
    offer. Its bytes are parsed by the suite's parser (``support.parse_events``).
    """

    def __init__(self, host: str, port: int, target: str, rcvbuf: int = 4096) -> None:
        self.host = host
        self.port = port
        self.target = target
        self.rcvbuf = rcvbuf
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status: int | None = None
        self.head = b""
        self.body = bytearray()
        self.ended: str | None = None  # "eof" / "reset" once the server ended it

    async def connect(self, headers: dict[str, str] | None = None) -> LaggingClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), 10)
        except BaseException:
            sock.close()
            raise
        # a small limit: the StreamReader stops pulling from the socket at 2 * limit
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        lines = [
            f"GET {self.target} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        self.head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        self.status = int(self.head.split(b" ", 2)[1])
        # the first frame (`connected`) and nothing more
        first = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 10)
        self.body += first
        return self

    @property
    def chunked(self) -> bool:
        return b"transfer-encoding: chunked" in self.head.lower()

    async def read_rest(self, timeout: float, until: bytes | None = None) -> None:  # noqa: ASYNC109
        """Resume reading: until EOF/reset, until the frame holding ``until`` is complete,
        or the deadline (TimeoutError)."""
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        while True:
            if until is not None:
                at = self.body.find(until)
                if at != -1 and self.body.find(b"\n\n", at) != -1:
                    return  # the whole frame holding `until` has arrived
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"lagging client: no end after {timeout}s ({len(self.body)} bytes)"
                )
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 20), left)
            except (ConnectionResetError, BrokenPipeError):
                self.ended = "reset"
                return
            except TimeoutError:
                continue
            if not data:
                self.ended = "eof"
                return
            self.body += data

    def events(self) -> list[Event]:
        """The events received so far, by the suite's SSE parser (a frame cut short
        by the end of what was read is not an event)."""
        body = bytes(self.body)
        # the first frame was read with readuntil(b"\n\n"): it starts with a chunk size line
        if self.chunked:
            body = dechunk(body)
        return parse_events(body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


_N = re.compile(rb'data: \{"n": (\d+)')


class CountingClient:
    """A fast SSE reader for volume: records the ``n`` of every event payload.

    Not support.open_stream: its streams get thousands of 10 KiB events (100 MiB in
    the memory test) and must keep up, or the gateway queues for them too. The suite's
    client keeps every byte and every parsed event and parses line by line: memory
    and CPU taken on the machine running the gateway under test. This one keeps
    one integer per event.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[int] = []
        self.other: list[bytes] = []  # frames without an "n" payload
        self.connected = asyncio.Event()
        self.status: int | None = None
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> CountingClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def _run(self) -> None:
        assert self._session is not None
        buf = b""
        try:
            async with self._session.get(self.url, headers={"Accept": "text/event-stream"}) as resp:
                self.status = resp.status
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *frames, buf = buf.split(b"\n\n")
                    for frame in frames:
                        m = _N.search(frame)
                        if m:
                            self.seen.append(int(m[1]))
                        elif frame.strip() and not frame.startswith(b":"):
                            self.other.append(frame)
                            if b"event: connected" in frame:
                                self.connected.set()
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.closed = True
            self.connected.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()


# -- process / metrics -------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class PeakRss:
    """The highest RSS of ``pid`` sampled every 20 ms from start() until stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.sampling = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sampling = True
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> int:
        """Stop sampling (after the current interval); the peak."""
        self.sampling = False
        if self._task is not None:
            await self._task
        return self.peak

    async def _sample(self) -> None:
        while self.sampling:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.02)  # sampling interval


async def metric_value(url: str, name: str) -> float:
    """One sample of ``name`` (without labels) scraped from ``url``; 0 if absent."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url) as resp:
            text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stalled_stream(gw: Any, shop: str) -> socket.socket:
    """A stream that reads its headers, then never reads again (4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(f"GET {gw.path}?shop={shop} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    sock.recv(4096)
    return sock
