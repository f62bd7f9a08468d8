"""Browser-like SSE clients: each tab reconnects with the Last-Event-ID it last saw.

A tab reconnects at random moments (as a page reload or a network change
would), after a refusal or a closed stream (as EventSource and the shipped JS
client do, with a shorter wait), sends its last id as the ``Last-Event-ID``
header or the ``lastEventId`` query parameter (at random), and some tabs stop
reading for a few seconds now and then. Every frame is logged with its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.parse

import aiohttp

from .records import ClientLog, Frame, Session, durable_id
from .schedule import ClientPlan, shop_of

__all__ = ["BrowserClient"]

_READ_TIMEOUT_S = 15.0  # three heartbeats (sse.heartbeat 5 s in chaos runs)


class BrowserClient:
    """One tab; :meth:`run` until ``done`` is set; ``final`` ends the random behaviour."""

    def __init__(self, plan: ClientPlan, http: aiohttp.ClientSession, entries: dict[str, str],
                 path: str, final: asyncio.Event, done: asyncio.Event) -> None:
        self.plan = plan
        self.http = http
        self.entries = sorted(entries.items())
        self.path = path
        self.final = final
        self.done = done
        self.rng = random.Random(plan.seed)
        self.log = ClientLog(plan.name, plan.merchant)
        self.last_id: str | None = None  # the browser's last event ID
        self.last_durable: str | None = None
        self.retry_s = 1.0

    async def run(self) -> ClientLog:
        await asyncio.sleep(self.rng.uniform(0, 1.0))  # tabs do not all open at once
        while not self.done.is_set():
            session = await self._session()
            if self.done.is_set():
                break
            if session.end == "reconnect":
                wait = self.rng.uniform(0.0, 0.3)
            else:  # EventSource waits `retry`; capped, so faults are met by a busy run
                wait = self.rng.uniform(0.2, min(self.retry_s, 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), wait)
        return self.log

    async def _session(self) -> Session:
        entry, base = self.rng.choice(self.entries)
        query = {"shop": shop_of(self.plan.merchant)}
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        via = ""
        if self.last_id is not None:
            via = self.rng.choice(("header", "query"))
            if via == "header":
                headers["Last-Event-ID"] = self.last_id
            else:
                query["lastEventId"] = self.last_id
        s = Session(time.monotonic(), self.last_id, via, entry)
        self.log.sessions.append(s)
        lifetime = self.rng.uniform(1.5, 9.0)
        pause_at = self.rng.uniform(0.5, lifetime) if self.plan.slow else None
        pause_s = self.rng.uniform(1.0, 4.0)
        url = f"{base}{self.path}?{urllib.parse.urlencode(query)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=_READ_TIMEOUT_S)
        try:
            async with self.http.get(url, headers=headers, timeout=timeout) as resp:
                s.status = resp.status
                if resp.status != 200:
                    s.end = f"status:{resp.status}"
                else:
                    s.end = await self._read(resp, s, s.started + lifetime, pause_at, pause_s)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            s.end = f"error:{type(exc).__name__}"
        s.ended = time.monotonic()
        return s

    async def _read(self, resp: aiohttp.ClientResponse, s: Session, deadline: float,
                    pause_at: float | None, pause_s: float) -> str:
        """Read frames until the planned reconnect, the end of the run or of the stream.

        Lines are read by one task that is never cancelled mid-stream except to
        end the session (aiohttp's readline is not cancel-safe)."""
        pause = None if pause_at is None else s.started + pause_at
        lines = asyncio.ensure_future(self._lines(resp, s, pause, pause_s))
        done = asyncio.ensure_future(self.done.wait())
        final = asyncio.ensure_future(self.final.wait())
        try:
            while True:
                timeout = None if self.final.is_set() else max(0.0, deadline - time.monotonic())
                waits = {lines, done} | (set() if self.final.is_set() else {final})
                finished, _ = await asyncio.wait(waits, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                if lines in finished:
                    return lines.result()
                if self.done.is_set():
                    return "final"
                if not finished:
                    return "reconnect"
        finally:
            for task in (lines, done, final):
                task.cancel()
            await asyncio.gather(lines, done, final, return_exceptions=True)

    async def _lines(self, resp: aiohttp.ClientResponse, s: Session, pause: float | None,
                     pause_s: float) -> str:
        """Parse the stream (WHATWG rules; the gateway ends lines with LF)."""
        event, block_id = "", None
        data: list[str] = []
        try:
            while raw := await resp.content.readline():
                line = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
                if line == "":
                    if block_id is not None:
                        self.last_id = block_id
                    if data:
                        self._dispatch(s, event or "message", block_id, "\n".join(data))
                    event, data, block_id = "", [], None
                    if pause is not None and time.monotonic() >= pause:
                        pause = None  # a tab in the background: nothing read for a while
                        if not self.final.is_set():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self.final.wait(), pause_s)
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id" and "\0" not in value:
                        block_id = value
                    elif name == "retry" and value.isdigit():
                        self.retry_s = int(value) / 1000
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            return f"error:{type(exc).__name__}"
        return "eof"

    def _dispatch(self, s: Session, event: str, event_id: str | None, data: str) -> None:
        s.frames.append(Frame(time.monotonic(), event, event_id, data))
        if event_id is not None and durable_id(event_id) is not None:
            self.last_durable = event_id
