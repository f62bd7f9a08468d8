"""Helpers for tests/test_rolling_deploy_e2e.py: EventSource-like followers and nginx.

A `Follower` behaves as a browser's EventSource does: it reconnects when a
stream ends (after the last `retry:` it was sent), sends `Last-Event-ID`, and
records every event it receives. A non-200 answer would make a browser give up;
here it is recorded (the test asserts there are none) and the follower retries.
Each response is read with the suite's SSE client (support.open_stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from support import SSEStream, open_stream, wait_for

from tools.services import NginxServer, nginx_main_conf

REPO_ROOT = Path(__file__).resolve().parent.parent
SNIPPET = REPO_ROOT / "config" / "nginx.conf"
MAX_CONNECTS = 60  # per follower: a rollout of 3 costs at most a few


@dataclass
class Follower:
    """One EventSource on `url`, following `event` frames of its merchant."""

    url: str
    merchant: str
    event: str
    ids: list[str] = field(default_factory=list)
    last_id: str | None = None
    retry_ms: int = 3000
    bad_statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resyncs: int = 0
    shutdowns: list[float] = field(default_factory=list)  # when `event: shutdown` came
    shutdown_retries: list[int] = field(default_factory=list)  # the `retry:` each announced
    opened: list[float] = field(default_factory=list)  # when each 200 came
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Connect, read, reconnect after `retry`; bounded by MAX_CONNECTS."""
        for _ in range(MAX_CONNECTS):
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                async with open_stream(self.url, headers, session=session) as stream:
                    if stream.status != 200:
                        self.bad_statuses.append(stream.status)
                    else:
                        self.opened.append(time.monotonic())
                        await self._read(stream)
            except (aiohttp.ClientError, OSError) as e:
                self.errors.append(f"{time.monotonic():.3f} {e!r}")
            await asyncio.sleep(self.retry_ms / 1000)  # EventSource's reconnection time

    async def _read(self, stream: SSEStream) -> None:
        """Every event of one response, as it comes, until the stream ends."""
        while True:
            try:  # an EventSource waits for the next event as long as the stream is open
                ev = await stream.next_event(timeout=math.inf)
            except EOFError:
                break
            if ev.retry is not None:
                self.retry_ms = ev.retry
            if ev.id is not None:
                self.last_id = ev.id
            self._dispatch(ev.event, ev.id)
        if stream.error is not None:
            self.errors.append(f"{time.monotonic():.3f} {stream.error!r}")
        if stream.undispatched:  # the gateway sends none: this follower would not apply them
            self.errors.append(f"blocks without data (not events): {stream.undispatched[:3]}")

    def _dispatch(self, event: str, event_id: str | None) -> None:
        if event == "connected":
            self.connected.set()
        elif event == self.event and event_id is not None:
            self.ids.append(event_id)
        elif event == "resync":
            self.resyncs += 1
        elif event == "shutdown":
            self.shutdowns.append(time.monotonic())
            self.shutdown_retries.append(self.retry_ms)  # the frame's retry: field came first


def upstream_conf(nginx_port: int, gateway_ports: list[int]) -> str:
    """config/nginx.conf, its upstream holding `gateway_ports`, inside a complete nginx.conf."""
    text = SNIPPET.read_text()
    line = "    server 127.0.0.1:8080;\n"
    assert text.count(line) == 1, "config/nginx.conf lost its upstream placeholder"
    text = text.replace(line, "".join(f"    server 127.0.0.1:{p};\n" for p in gateway_ports))
    text = text.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
    text = text.replace("/var/log/nginx/gateway_access.log", "@PREFIX@/logs/gateway_access.log")
    return nginx_main_conf(text)


async def reload_upstream(nginx: NginxServer, gateway_ports: list[int]) -> None:
    """Rewrite the upstream and reload; return once the new workers have started."""
    assert nginx.port is not None
    log = nginx.prefix / "logs" / "error.log"

    def workers_started() -> int:
        with contextlib.suppress(OSError):
            return log.read_text(errors="replace").count("start worker process")
        return 0

    before = workers_started()
    nginx.conf_text = upstream_conf(nginx.port, gateway_ports)
    nginx.reload()
    try:
        await wait_for(lambda: workers_started() > before, timeout=10, interval=0.02,
                       message="for nginx's new worker processes")
    except TimeoutError as exc:
        raise AssertionError(f"nginx did not reload ({exc}):\n{nginx.error_log_text()}") from None


def histogram(offsets: list[float], bucket: float = 0.5) -> str:
    """Text histogram of seconds after SIGTERM, one line per `bucket`."""
    if not offsets:
        return "    (none)"
    counts: dict[int, int] = {}
    for x in offsets:
        counts[int(x // bucket)] = counts.get(int(x // bucket), 0) + 1
    top = max(counts.values())
    return "\n".join(
        f"    {b * bucket:4.1f}-{(b + 1) * bucket:4.1f}s {counts.get(b, 0):4d} "
        + "#" * round(40 * counts.get(b, 0) / top)
        for b in range(min(counts), max(counts) + 1))
