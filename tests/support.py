# ruff: noqa: ASYNC109  (the brief's API takes explicit timeout= arguments)
"""Helpers shared by the tests: an SSE client, publish, polling, HTTP JSON.

    async with open_stream(url) as s:
        assert s.status == 200
        ev = await s.next_event(timeout=5)      # Event(id, event, data, retry, comments)
        raw = await s.read_raw_until(b"\\n\\n")   # exact bytes of the next block
        await s.wait_closed(timeout=5)

The event parser and the raw reader have independent cursors: reading raw
bytes does not consume events and vice versa.  ``s.raw`` holds every byte
received so far.  ``parse_events(body)`` parses bytes a raw client captured
with the same parser.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import inspect
import itertools
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

__all__ = [
    "ISOLATED_ENV",
    "Event",
    "SSEStream",
    "http_json",
    "open_stream",
    "over_maxmemory",
    "parse_events",
    "podman_turn",
    "publish",
    "report",
    "stream_session",
    "unique_merchant",
    "wait_for",
    "wait_until",
]

# Environment variables that would leak the developer's setup into a gateway child.
ISOLATED_ENV = (
    "REDIS_URL",
    "DATABASE_URL",
    "GATEWAY_CONFIG",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "GATEWAY_PUBLISH_KEY",
)


@dataclass
class Event:
    """One dispatched SSE event (WHATWG rules).

    ``id`` is the ``id:`` field of this block (None when the block had none);
    ``last_event_id`` is the stream's last-event-id buffer after it, as a
    browser would report it.  ``event`` defaults to ``"message"``.  ``data``
    has the trailing LF removed.  ``comments`` are the comment lines (without
    the leading ``:``) seen since the previous event.  ``fields`` lists every
    (name, value) line of the block, in order.
    """

    id: str | None
    event: str
    data: str
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    last_event_id: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEStream:
    """An open HTTP response read as an SSE stream. Use :func:`open_stream`."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.status: int = resp.status
        self.headers = resp.headers
        self.raw = bytearray()
        self.closed = False
        self.error: BaseException | None = None
        self._cond = asyncio.Condition()
        self._raw_pos = 0
        self._init_parser()
        self._task = asyncio.create_task(self._reader())

    def _init_parser(self) -> None:
        """The WHATWG parser's state (also used alone by :func:`parse_events`)."""
        # every comment line ever received (without ':'), in order
        self.comments: list[str] = []
        # blocks that had fields but were not dispatched (no data)
        self.undispatched: list[list[tuple[str, str]]] = []
        self.last_event_id = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._text_pos = 0
        self._events: list[Event] = []
        self._pending_fields: list[tuple[str, str]] = []
        self._pending_comments: list[str] = []
        self._data: list[str] = []
        self._event_type = ""
        self._block_id: str | None = None
        self._retry: int | None = None
        self._bom_checked = False

    # -- reading -----------------------------------------------------------
    async def _reader(self) -> None:
        try:
            async for chunk in self.resp.content.iter_any():
                async with self._cond:
                    self.raw += chunk
                    self._feed(self._decoder.decode(chunk), final=False)
                    self._cond.notify_all()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            self.error = e
        finally:
            async with self._cond:
                self._feed(self._decoder.decode(b"", final=True), final=True)
                self.closed = True
                self._cond.notify_all()

    async def _wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        async def waiter() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: pred() or self.closed)

        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what}; "
                f"received so far: {bytes(self.raw)[-2000:]!r}"
            ) from None

    # -- WHATWG event-stream parsing ------------------------------------------
    def _feed(self, text: str, final: bool) -> None:
        self._text += text
        if not self._bom_checked and self._text:
            if self._text.startswith("\ufeff"):
                self._text = self._text[1:]
            self._bom_checked = True
        while True:
            buf = self._text
            pos = self._text_pos
            idx_lf = buf.find("\n", pos)
            idx_cr = buf.find("\r", pos)
            if idx_cr == -1 and idx_lf == -1:
                break
            if idx_cr != -1 and (idx_lf == -1 or idx_cr < idx_lf):
                if idx_cr + 1 == len(buf) and not final:
                    break  # CR at the end: it may be the first half of CRLF
                end = idx_cr
                nxt = idx_cr + 2 if buf.startswith("\n", idx_cr + 1) else idx_cr + 1
            else:
                end = idx_lf
                nxt = idx_lf + 1
            self._line(buf[pos:end])
            self._text_pos = nxt
        # compact
        if self._text_pos > 65536:
            self._text = self._text[self._text_pos :]
            self._text_pos = 0
        # a final incomplete block is discarded (per spec)

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            c = line[1:]
            self.comments.append(c)
            self._pending_comments.append(c)
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._pending_fields.append((name, value))
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._block_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)

    def _dispatch(self) -> None:
        fields, self._pending_fields = self._pending_fields, []
        if not self._data:
            if fields:
                self.undispatched.append(fields)
            self._event_type = ""
            self._block_id = None
            self._retry = None
            return
        ev = Event(
            id=self._block_id,
            event=self._event_type or "message",
            data="\n".join(self._data),
            retry=self._retry,
            comments=self._pending_comments,
            last_event_id=self.last_event_id,
            fields=fields,
        )
        self._pending_comments = []
        self._data = []
        self._event_type = ""
        self._block_id = None
        self._retry = None
        self._events.append(ev)

    # -- public API -----------------------------------------------------------
    async def next_event(self, timeout: float = 5) -> Event:
        """The next dispatched event; TimeoutError, or EOFError when closed."""
        await self._wait(lambda: bool(self._events), timeout, "an SSE event")
        if not self._events:
            raise EOFError(f"stream closed; received: {bytes(self.raw)[-2000:]!r}")
        return self._events.pop(0)

    async def next_event_of(self, name: str, timeout: float = 5) -> Event:
        """Skip events until one of type ``name`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next_event(max(0.0, deadline - time.monotonic()))
            if ev.event == name:
                return ev

    async def events(self, n: int, timeout: float = 5) -> list[Event]:
        """The next ``n`` events (one overall deadline)."""
        deadline = time.monotonic() + timeout
        return [
            await self.next_event(max(0.0, deadline - time.monotonic())) for _ in range(n)
        ]

    def pending_events(self) -> list[Event]:
        """Events already parsed and not yet consumed (consumes them)."""
        out, self._events = self._events, []
        return out

    async def read_raw_until(self, delimiter: bytes = b"\n\n", timeout: float = 5) -> bytes:
        """Bytes from the raw cursor up to and including ``delimiter``."""
        await self._wait(
            lambda: self.raw.find(delimiter, self._raw_pos) != -1,
            timeout,
            f"raw bytes ending {delimiter!r}",
        )
        idx = self.raw.find(delimiter, self._raw_pos)
        if idx == -1:
            raise EOFError(f"stream closed; received: {bytes(self.raw)[-2000:]!r}")
        end = idx + len(delimiter)
        out = bytes(self.raw[self._raw_pos : end])
        self._raw_pos = end
        return out

    async def wait_comment(self, text: str = " ping", timeout: float = 5) -> None:
        """Wait until a comment line equal to ``text`` (after ':') is received."""
        start = len(self.comments)

        def seen() -> bool:
            return text in self.comments[start:]

        await self._wait(seen, timeout, f"comment {text!r}")
        if not seen():
            raise EOFError(f"stream closed; received: {bytes(self.raw)[-2000:]!r}")

    async def wait_raw(self, marker: bytes, timeout: float = 5) -> None:
        """Wait until ``marker`` is among the bytes received (no cursor moves)."""
        await self._wait(lambda: marker in self.raw, timeout, f"raw bytes {marker!r}")
        if marker not in self.raw:
            raise EOFError(f"closed before {marker!r}; received: {bytes(self.raw)[-500:]!r}")

    async def wait_closed(self, timeout: float = 5) -> None:
        """Wait until the server ends the response body."""
        await self._wait(lambda: self.closed, timeout, "the stream to close")

    async def json_body(self, timeout: float = 5) -> Any:
        """The whole body parsed as JSON (for refusals)."""
        await self.wait_closed(timeout)
        return json.loads(bytes(self.raw).decode())

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.resp.close()


def parse_events(body: bytes) -> list[Event]:
    """The events in bytes already received whole (a raw client's body), parsed as
    :class:`SSEStream` parses a live stream: a last block without its blank line is
    not an event (a browser would not dispatch it either)."""
    parser = SSEStream.__new__(SSEStream)  # the parser alone: no response, no reader task
    parser._init_parser()
    parser._feed(parser._decoder.decode(body, final=True), final=True)
    return parser.pending_events()


def stream_session(connect_timeout: float = 10) -> aiohttp.ClientSession:
    """A session for many streams: no read timeout, no connection limit or reuse."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=connect_timeout),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        auto_decompress=False,
    )


@contextlib.asynccontextmanager
async def open_stream(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    connect_timeout: float = 10,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[SSEStream]:
    """Open ``url`` like an EventSource would (GET, Accept: text/event-stream).

    No total/read timeout: each method takes its own ``timeout``.  Pass
    ``session`` to share one ClientSession among many streams.
    """
    hdrs = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    hdrs.update(headers or {})
    own = session is None
    if session is None:
        session = stream_session(connect_timeout)
    stream: SSEStream | None = None
    try:
        resp = await session.get(url, headers=hdrs)
        stream = SSEStream(resp)
        yield stream
    finally:
        if stream is not None:
            await stream.close()
        if own:
            await session.close()


async def publish(redis_url: str, channel: str, payload: Any) -> int:
    """PUBLISH ``payload`` (str/bytes, or JSON-encoded otherwise); receivers count."""
    import redis.asyncio as aioredis

    if not isinstance(payload, str | bytes):
        payload = json.dumps(payload)
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int(await client.publish(channel, payload))
    finally:
        await client.aclose()


# What a probe may raise while the condition is "not yet": the last one is reported.
_NOT_YET = (AssertionError, OSError, aiohttp.ClientError, ValueError, KeyError)


class _Deadline:
    """The clock and the last "not yet" error of one :func:`wait_for` / :func:`wait_until`."""

    def __init__(self, timeout: float, message: str) -> None:
        self.timeout = timeout
        self.message = message
        self.end = time.monotonic() + timeout
        self.last: BaseException | None = None

    def check(self) -> None:
        """TimeoutError once the deadline has passed."""
        if time.monotonic() >= self.end:
            raise TimeoutError(
                f"condition not met within {self.timeout}s {self.message}"
                + (f" (last error: {self.last!r})" if self.last else "")
            )


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Poll ``predicate`` (sync or async) until truthy; return its value.

    The tests' one poller (:func:`wait_until` is its synchronous twin), for
    state outside the test's reach (a process, a metric, a log). Raises
    TimeoutError after ``timeout`` seconds; the errors in ``_NOT_YET`` raised
    by the predicate count as "not yet" and the last one is reported.
    """
    clock = _Deadline(timeout, message)
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except _NOT_YET as e:
            clock.last = e
        clock.check()
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], T], timeout: float = 5, interval: float = 0.05, message: str = ""
) -> T:
    """Synchronous :func:`wait_for`."""
    clock = _Deadline(timeout, message)
    while True:
        try:
            value = predicate()
            if value:
                return value
        except _NOT_YET as e:
            clock.last = e
        clock.check()
        time.sleep(interval)


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status of a GET (synchronous), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def http_json(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    *,
    json_body: Any = None,
    data: Any = None,
    timeout: float = 10,
) -> tuple[int, Any, Any]:
    """One HTTP request: (status, headers, body) with body JSON-decoded when it
    parses, else the text."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(force_close=True),
    ) as session:
        async with session.request(
            method, url, headers=headers, json=json_body, data=data
        ) as resp:
            text = await resp.text(errors="replace")
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return resp.status, resp.headers, body


_counter = itertools.count(1)


def unique_merchant(prefix: str = "m") -> tuple[str, str]:
    """A fresh (merchant_id, shop_domain) pair that matches the shop regex."""
    n = next(_counter)
    tag = f"{prefix}-{os.getpid()}-{n}-{time.monotonic_ns() % 100000}".lower()
    return f"{tag}-id", f"{tag}.myshopify.com"


def report(config: Any, text: str) -> None:
    """Write `text` to the terminal even while pytest captures output (a test's figures,
    such as an image's size or a drain's reconnect histogram, belong in `make test`'s
    output). `config` is pytest's (`request.config`)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        print(text)
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in text.splitlines():
            reporter.write_line(line)


@contextlib.contextmanager
def podman_turn(state: Path) -> Iterator[None]:
    """The podman state `state` (.run/podman) to this process alone meanwhile: the image
    and compose test modules build into and run from one state, and `make test` runs
    them in different xdist workers (two debootstraps into one directory fail)."""
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state.parent / f"{state.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def over_maxmemory(client: Any) -> int:
    """Put a Redis (redis.asyncio client) 1 MiB over its `maxmemory`, `noeviction`;
    its `used_memory` then. The 4 MiB ballast goes in 64 KiB values: one 4 MiB
    command leaves a 4 MiB query buffer that Redis frees a moment later, which would
    bring it back under the limit in the middle of a test."""
    for i in range(64):
        await client.set(f"ballast:{i}", b"b" * (64 << 10))
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", str(used - (1 << 20)))
    await client.config_set("maxmemory-policy", "noeviction")
    return used
