"""Pure SSE encoding (WHATWG `text/event-stream`): values in, wire bytes out, batched.

A frame is encoded once per message and the same bytes are handed to every
stream. Streams on HTTP/1.1 need chunked transfer framing; `chunk()` adds it
once per frame too, so no per-stream work remains but the socket write.
`Entry` (a published event) and `Control` (a gateway frame) are those encoded
frames as the hub's history and the streams' queues hold them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import OrderedDict
from typing import Any, TypeAlias

__all__ = [
    "HEARTBEAT",
    "PING",
    "Control",
    "Deliverable",
    "Entry",
    "Heartbeat",
    "Wire",
    "chunk",
    "control_frame",
    "event_frame",
    "take_batch",
    "wire",
]

PING = b": ping\n\n"

Wire: TypeAlias = tuple[memoryview, bytes]
"""A frame as written to a stream: (plain, HTTP/1.1-chunked), sharing one buffer."""
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _data_lines(payload: str) -> str:
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(payload))


def event_frame(event_id: str, event: str, payload: bytes) -> bytes:
    """`id`/`event` fields and the payload as one or more `data:` lines.

    Line breaks in the payload (CR, LF, CRLF) become separate `data:` lines, so a
    payload can never add fields or frames; invalid UTF-8 is replaced, never sent.
    """
    head = f"id: {event_id}\nevent: {event}\n".encode()
    if b"\n" not in payload and b"\r" not in payload:
        try:
            payload.decode()
        except UnicodeDecodeError:
            payload = payload.decode(errors="replace").encode()
        return b"%sdata: %s\n\n" % (head, payload)
    text = payload.decode(errors="replace")
    return head + _data_lines(text).encode() + b"\n"


def control_frame(event: str, data: dict[str, Any], *, retry_ms: int | None = None) -> bytes:
    """A gateway-originated event (`connected`, `resync`, `shutdown`, `revoked`)."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{retry}event: {event}\ndata: {body}\n\n".encode()


def chunk(frame: bytes) -> bytes:
    """HTTP/1.1 chunked transfer framing of one frame."""
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def wire(frame: bytes) -> Wire:
    """Both forms of a frame in one allocation: the plain form is a view into the chunked one.

    A frame of a 256 KiB payload costs 256 KiB once, not twice.
    """
    chunked = chunk(frame)
    start = chunked.index(b"\r\n") + 2
    return memoryview(chunked)[start:-2], chunked


_UNPARSED = object()


class Entry:
    """One published event, shared by the history and every stream queue.

    The payload is kept only where a lagging stream may need its job id
    (`coalesce` types); otherwise the framed bytes are the only copy.
    """

    __slots__ = ("_job", "event", "id", "payload", "seq", "wire")

    def __init__(
        self, seq: int, event_id: str, event: str, payload: bytes, *, keep_payload: bool = True
    ) -> None:
        self.seq = seq
        self.id = event_id
        self.event = event
        self.payload = payload if keep_payload else b""
        self.wire: Wire = wire(event_frame(event_id, event, payload))
        self._job: object = _UNPARSED if keep_payload else None

    def renumbered(self, seq: int) -> Entry:
        """The same frame under queue key `seq` (a stream queues each key once)."""
        return self._copy(seq, self.wire)

    def without_id(self) -> Entry:
        """The same event framed without its `id:` line (the browser keeps its
        Last-Event-ID); `id` stays for matching."""
        framed = bytes(self.wire[0])
        return self._copy(self.seq, wire(framed[framed.index(b"\n") + 1:]))

    def _copy(self, seq: int, framed: Wire) -> Entry:
        copy = Entry.__new__(Entry)
        copy.seq, copy.id, copy.event, copy.wire = seq, self.id, self.event, framed
        copy.payload, copy._job = self.payload, self._job
        return copy

    @property
    def size(self) -> int:
        """Bytes this event holds in a stream's queue."""
        return len(self.wire[1])

    def job(self, job_key: str) -> str | None:
        """The payload's job id, parsed on first need (only lagging streams ask)."""
        if self._job is _UNPARSED:
            job = None
            try:
                doc = json.loads(self.payload)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to bother
                doc = None
            if isinstance(doc, dict):
                value = doc.get(job_key)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    job = str(value)
            self._job = job
            self.payload = b""  # parsed once; the frame holds the bytes the stream needs
        return self._job  # type: ignore[return-value]


class Control:
    """A gateway-originated frame (resync, shutdown, revoked): never coalesced."""

    __slots__ = ("event", "seq", "wire")
    _keys = itertools.count(-1, -1)

    def __init__(self, event: str, data: dict[str, object], retry_ms: int | None = None) -> None:
        self.event = event
        self.seq = next(self._keys)
        self.wire: Wire = wire(control_frame(event, data, retry_ms=retry_ms))

    @property
    def size(self) -> int:
        return len(self.wire[1])


class Heartbeat:
    """The `: ping` comment, deliverable like an event (seq 0: no event has it)."""

    __slots__ = ()
    event = "ping"
    seq = 0
    wire: Wire = wire(PING)
    size = len(wire[1])


HEARTBEAT = Heartbeat()

Deliverable: TypeAlias = "Entry | Control | Heartbeat"
"""What a stream writes: an event, a gateway frame, or the heartbeat."""


def take_batch(queue: OrderedDict[int, Deliverable], index: int, limit: int) -> tuple[bytes, int]:
    """The oldest queued frames, taken off `queue` and joined into one write of about
    `limit` bytes at most (bounded, so drain still applies), in form `index` (0 plain,
    1 chunked); with the queue bytes they held."""
    parts: list[memoryview | bytes] = []
    size = taken = 0
    while queue and size < limit:
        _, entry = queue.popitem(last=False)
        data = entry.wire[index]
        parts.append(data)
        size += len(data)
        taken += entry.size
    return b"".join(parts), taken
