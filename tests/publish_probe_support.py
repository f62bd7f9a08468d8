# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""The hostile publish/body probe of tests/test_publish_hardening_e2e.py: gzip bombs
to every endpoint, media types and encodings, stalled bodies, echoing 400 pages.

    bomb()                                  # 1 MB of gzip that inflates to 1000 MiB
    status = await send_with_body(port, head, body)
    cpu_seconds(pid)                        # the process and its children (workers)
    shipped_nginx(nginx_factory, gw.port)   # config/nginx.conf in front of a gateway
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from functools import cache
from pathlib import Path
from typing import Any

from hostile_support import status_of

from tools.services import NginxServer, free_port, nginx_main_conf

__all__ = [
    "BOMB_INFLATED",
    "MODES",
    "bomb",
    "cpu_seconds",
    "p99",
    "read_until_closed",
    "send_with_body",
    "shipped_nginx",
    "workers_in",
]

MODES = ("direct", "nginx", "workers")
"""How a hostile case reaches the gateway: directly, through the shipped nginx config
(`shipped_nginx`), or with `server.workers: 2` (`workers_in`)."""

NGINX_CONF = Path(__file__).resolve().parent.parent / "config" / "nginx.conf"

MiB = 1024 * 1024
BOMB_INFLATED = 1000 * MiB


@cache
def bomb() -> bytes:
    """A gzip body of about 1 MB that inflates to 1000 MiB of zeros.

    Built from one fully flushed block repeated (a few ms instead of seconds of
    deflate); its trailer's CRC is wrong, which an inflater notices only at the end.
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    return first + again * (BOMB_INFLATED // MiB - 2) + deflate.flush()


async def send_with_body(port: int, head: bytes, body: bytes, timeout: float = 10.0) -> int | None:
    """Send ``head`` (request line and headers, no blank line) with ``body`` while
    reading the answer: its status (None when closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body))
        for at in range(0, len(body), 64 * 1024):
            writer.write(body[at : at + 64 * 1024])
            await writer.drain()

    sending = asyncio.create_task(send())
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n" not in got:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                got += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return status_of(got)


async def read_until_closed(port: int, data: bytes, timeout: float) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes: (what came back, seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                got += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return got, time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of its live children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("inf")


def shipped_nginx(nginx_factory: Any, gateway_port: int) -> NginxServer:
    """The shipped config/nginx.conf in front of the gateway, its body timeout at 2 s."""
    text = NGINX_CONF.read_text()
    port = free_port()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("/var/log/nginx/gateway_access.log", "@PREFIX@/logs/gateway_access.log")
    assert "client_body_timeout 10s;" in text
    text = text.replace("client_body_timeout 10s;", "client_body_timeout 2s;")
    server: NginxServer = nginx_factory(nginx_main_conf(text), port=port)
    return server


def workers_in(mode: str) -> int:
    """`server.workers` for a mode of `MODES`."""
    return 2 if mode == "workers" else 1
