"""Browser-like SSE clients: each tab reconnects with the Last-Event-ID it last saw.

A tab reconnects at random moments (as a page reload or a network change
would), after a refusal or a closed stream (as EventSource and the shipped JS
client do, with a shorter wait), sends its last id as the ``Last-Event-ID``
header or the ``lastEventId`` query parameter (at random), and some tabs stop
reading for a few seconds now and then. Every frame is logged with its time.

A storm (:mod:`tools.chaos.storms`) may steer a tab: :meth:`BrowserClient.steer`
ends its session at once and sends the next ones to one entry (a chosen
gateway process), and :meth:`BrowserClient.arm` makes it leave for another
entry the moment it reads a given event of a burst, as a tab reloaded right
after an event would. While :attr:`Steering.avoid` names entries, tabs not
steered keep away from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.parse
from dataclasses import dataclass, field

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from .records import ClientLog, Frame, Session, durable_id
from .schedule import ClientPlan, shop_of

__all__ = ["BrowserClient", "Steering"]

_READ_TIMEOUT_S = 15.0  # three heartbeats (sse.heartbeat 5 s in chaos runs)
_STEERED = ("steered", "jump")  # session ends that reconnect at once
_MAX_LINE = 16 << 20  # a browser has no limit; a snapshot of 10,000 jobs is one line


@dataclass(slots=True)
class Steering:
    """What every tab shares: the entries a storm keeps free of unsteered tabs."""

    avoid: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Jump:
    entry: str
    storm: int
    index: int  # leave on reading the burst event with this index (or a later one)


class BrowserClient:
    """One tab; :meth:`run` until ``done`` is set; ``final`` ends the random behaviour."""

    def __init__(self, plan: ClientPlan, http: aiohttp.ClientSession, entries: dict[str, str],
                 path: str, final: asyncio.Event, done: asyncio.Event,
                 steering: Steering | None = None) -> None:
        self.plan = plan
        self.http = http
        self.urls = dict(entries)
        self.entries = sorted(entries)
        self.steering = steering or Steering()
        self.path = path
        self.final = final
        self.done = done
        self.rng = random.Random(plan.seed)
        self.log = ClientLog(plan.name, plan.merchant)
        self.last_id: str | None = None  # the browser's last event ID
        self.last_durable: str | None = None
        self.resynced_at = 0.0  # when the tab last read `resync` (told to refetch)
        self.retry_s = 1.0
        self.steer_to: str | None = None  # every next session goes there while set
        self.live_on: str | None = None  # the entry of the session that read `connected`
        self.session_entry: str | None = None  # the entry of the session under way
        self._jump: _Jump | None = None
        self._cut = asyncio.Event()  # ends the session now (steered)
        self._changed = asyncio.Event()  # pulsed whenever live_on changes

    def steer(self, entry: str) -> None:
        """From now on sessions go to ``entry``; a session elsewhere ends at once."""
        self.steer_to = entry
        if self.session_entry != entry:
            self._cut.set()

    def arm(self, entry: str, storm: int, index: int) -> None:
        """Leave for ``entry`` right after reading event ``index`` of burst ``storm``."""
        self._jump = _Jump(entry, storm, index)

    def release(self) -> None:
        self.steer_to, self._jump = None, None

    async def wait_live(self, entry: str, within_s: float) -> bool:
        """Whether a session on ``entry`` reads its ``connected`` frame within ``within_s``."""
        deadline = time.monotonic() + within_s
        while self.live_on != entry:
            left = deadline - time.monotonic()
            if left <= 0 or self.done.is_set():
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    def _set_live(self, entry: str | None) -> None:
        self.live_on = entry
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> ClientLog:
        await asyncio.sleep(self.rng.uniform(0, 1.0))  # tabs do not all open at once
        while not self.done.is_set():
            session = await self._session()
            if self.done.is_set():
                break
            if session.end in _STEERED:
                wait = 0.0  # a reload right after an event: at once
            elif session.end == "reconnect":
                wait = self.rng.uniform(0.0, 0.3)
            else:  # EventSource waits `retry`; capped, so faults are met by a busy run
                wait = self.rng.uniform(0.2, min(self.retry_s, 1.0))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.done.wait(), wait)
        return self.log

    async def _session(self) -> Session:
        free = [e for e in self.entries if e not in self.steering.avoid] or self.entries
        entry = self.steer_to or self.rng.choice(free)
        base = self.urls[entry]
        self._cut.clear()
        self.session_entry = entry
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
        self.session_entry = None
        self._set_live(None)
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
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            while True:
                steered = self.steer_to is not None or self._jump is not None
                timeout = None if self.final.is_set() or steered else max(
                    0.0, deadline - time.monotonic())
                waits = {lines, done, cut} | (set() if self.final.is_set() else {final})
                finished, _ = await asyncio.wait(waits, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                if lines in finished and lines.result() != "cut":
                    return lines.result()
                if self.done.is_set():
                    return "final"
                if cut in finished or lines in finished:
                    return "jump" if s.jumped else "steered"
                if not finished:
                    return "reconnect"
        finally:
            for task in (lines, done, final, cut):
                task.cancel()
            await asyncio.gather(lines, done, final, cut, return_exceptions=True)

    async def _lines(self, resp: aiohttp.ClientResponse, s: Session, pause: float | None,
                     pause_s: float) -> str:
        """Parse the stream (WHATWG rules; the gateway ends lines with LF)."""
        event, block_id = "", None
        data: list[str] = []
        try:
            while raw := await resp.content.readline(max_line_length=_MAX_LINE):
                line = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
                if line == "":
                    if block_id is not None:
                        self.last_id = block_id
                    if data:
                        self._dispatch(s, event or "message", block_id, "\n".join(data))
                    if self._cut.is_set():  # closed in the handler: nothing more is read
                        return "cut"
                    event, data, block_id = "", [], None
                    if pause is not None and time.monotonic() >= pause:
                        pause = None  # a tab in the background: nothing read for a while
                        if not self.final.is_set() and self.steer_to is None:
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
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError, ConnectionError) as exc:
            return f"error:{type(exc).__name__}"
        return "eof"

    def _dispatch(self, s: Session, event: str, event_id: str | None, data: str) -> None:
        frame = Frame(time.monotonic(), event, event_id, data)
        s.frames.append(frame)
        if event == "connected":
            self._set_live(s.entry)
        elif event == "resync":
            self.resynced_at = frame.t
        if event_id is not None and durable_id(event_id) is not None:
            self.last_durable = event_id
        jump = self._jump
        if jump is not None and event_id is not None and '"storm"' in data:
            payload = frame.payload()
            if isinstance(payload, dict) and payload.get("storm") == jump.storm and isinstance(
                    payload.get("i"), int) and payload["i"] >= jump.index:
                self._jump, self.steer_to, s.jumped = None, jump.entry, True
                self._cut.set()
