# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""Helpers of the hostile-input and hardening tests: raw HTTP exchanges, a liveness
probe that runs in its own process, a realistic session token, log checks.

    resp = await exchange(port, b"GET /\\x01 HTTP/1.1\\r\\n\\r\\n")
    status_of(resp)                    # 400, or None when the server just closed
    with LivenessProbe(port) as probe:  # GET /health/live in a loop, in its own process
        ...flood...
    probe.median()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any

import jwt
from support import http_json

__all__ = [
    "LivenessProbe",
    "bounded_gather",
    "exchange",
    "leaked_fragments",
    "raw_json",
    "session_token",
    "status_of",
    "ticket_for",
]


_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})[ \r]")
_PROBE_SCRIPT = Path(__file__).with_name("liveness_probe.py")


def session_token(shop: str, secret: str, ttl: float = 300) -> str:
    """A Shopify-style session token (HS256 JWT: header.payload.signature, base64url)."""
    now = int(time.time())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": "hostile-test-api-key",
        "sub": "42",
        "exp": now + int(ttl),
        "nbf": now - 5,
        "iat": now,
        "jti": f"jti-{now}",
        "sid": "session-id-hostile",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


async def ticket_for(gw: Any, shop: str, bearer: str) -> tuple[int, Any]:
    """POST {path}/ticket with a session token: (status, JSON body)."""
    status, _, body = await http_json(
        gw.url(f"{gw.path}/ticket", shop=shop),
        method="POST",
        headers={"Authorization": f"Bearer {bearer}"},
    )
    return status, body


def leaked_fragments(log: str, secret: str, window: int = 10) -> list[str]:
    """Every ``window``-character slice of ``secret`` that occurs in ``log``."""
    if len(secret) <= window:
        return [secret] if secret in log else []
    slices = {secret[i : i + window] for i in range(len(secret) - window + 1)}
    return sorted(s for s in slices if s in log)


def status_of(response: bytes) -> int | None:
    """The status code of an ``HTTP/x.y NNN`` status line at the start of ``response``."""
    match = _STATUS_LINE.match(response)
    return int(match[1]) if match else None


async def exchange(
    port: int,
    data: bytes | Iterable[bytes],
    *,
    linger: float = 0.0,
    timeout: float = 3.0,
    read: bool = True,
    host: str = "127.0.0.1",
) -> bytes:
    """Send ``data`` (bytes, or pieces written one after another) on a fresh connection.

    ``linger`` keeps the socket open that long after sending (a client that stops
    mid-request).  With ``read``, the answer is read until the end of its header
    block, EOF or ``timeout``; an open SSE body is never waited for.  Returns what
    came back (b"" when the server closed without answering); never raises for a
    reset or a timeout.
    """
    pieces = [data] if isinstance(data, bytes) else list(data)
    got = bytearray()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout + linger + 5):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 17)
            for piece in pieces:
                writer.write(piece)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            if linger:
                await asyncio.sleep(linger)  # the client dawdles; bounded by the caller
            if read:
                deadline = time.monotonic() + timeout
                while b"\r\n\r\n" not in got and len(got) < 1 << 17:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        chunk = await asyncio.wait_for(reader.read(1 << 16), left)
                    except TimeoutError:
                        break
                    if not chunk:
                        break
                    got += chunk
    except (ConnectionError, OSError, TimeoutError):
        pass
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return bytes(got)


async def raw_json(port: int, request: bytes, timeout: float = 5.0) -> tuple[int | None, Any]:
    """Send one raw request with ``Connection: close``; (status, JSON body or None).

    ``request`` is the request line and headers (a trailing CRLF is dropped); raw
    bytes get through that no HTTP client library would send (``\\xff`` in a header).
    """
    got = bytearray()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            tail = b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            writer.write(request.rstrip(b"\r\n") + tail)
            await writer.drain()
            while chunk := await reader.read(1 << 16):
                got += chunk
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    _, _, body = bytes(got).partition(b"\r\n\r\n")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return status_of(bytes(got)), doc


async def bounded_gather(jobs: Iterable[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run ``jobs`` (coroutine factories) with at most ``limit`` at once; results in order.

    A job's coroutine is made only when it starts, so a cancelled gather leaves no
    never-awaited coroutine behind.
    """
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


class LivenessProbe:
    """GET /health/live in a loop from a process of its own (tests/liveness_probe.py),
    timing each answer.

    Not a thread of the test process: the test floods the gateway meanwhile and its
    event loop holds the GIL for milliseconds at a time (longer when the host is
    busy and the holder is descheduled), so a thread timed its own waits for the
    GIL as gateway latency: with one core busy it saw 30-200 ms answers in the same
    runs where a probe process saw a few ms. A probe that gets no ``200`` within
    ``timeout`` counts as ``timeout``. Entering returns once the probe process has
    made one warm-up probe (not a sample), so its start-up is not measured either.
    """

    def __init__(self, port: int, interval: float = 0.05, timeout: float = 5.0) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> LivenessProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(_PROBE_SCRIPT), str(self.port), str(self.interval),
             str(self.timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="liveness-probe", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(self.timeout + 10):
            self.stop()
            raise RuntimeError(f"liveness probe on port {self.port} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the probe process after the probe under way (by its PID if it hangs)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: the probe process stops
        try:
            proc.wait(self.timeout + 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(self.timeout + 2)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.returncode != 0:
            self.failures.append(f"probe process exited {proc.returncode}")

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:  # until the probe process exits
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "ready":
                self._ready.set()
            elif kind == "ok":
                self.samples.append(float(rest))
            elif kind == "fail":
                seconds, _, what = rest.partition(" ")
                self.failures.append(what)
                self.samples.append(float(seconds))
        self._ready.set()  # ended: __enter__ does not wait for nothing

    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("inf")

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        ordered = sorted(self.samples)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        return (
            f"{len(ordered)} probes: median {self.median() * 1000:.1f} ms, "
            f"p90 {p90 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms, "
            f"failures {len(self.failures)} {self.failures[:3]}"
        )
