"""The reconnect-storm load client, run in its own process by ``python -m bench.storm``.

One stdin line per command, one JSON line answered on stdout:

- ``open``: open N streams (merchant ``m{i % M}``), wait for each one's first
  frame -> ``ready``
- ``expect K``: wait until every stream has seen K durable ids in total (or
  ``--timeout`` s) -> ``result``
- ``reconnect T0``: reopen every closed stream at once, each with its
  ``Last-Event-ID``, retrying a refusal after its Retry-After (jittered); a
  stream's replay time is counted from the wall-clock ``T0`` (the restart)
  until it has seen ``--missed`` more ids -> ``reconnecting``
- ``quit`` (or EOF).

Each stream checks what a browser would: its ids arrive in order, one offset
apart (no gap, no duplicate), and it counts ``resync`` frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time

from bench.client_proc import emit
from bench.hist import from_samples
from bench.streams import cpu_seconds, response_head, run_client

__all__ = ["main"]

RETRY_S = 0.1  # before another attempt of a failed connect
MAX_ATTEMPTS = 100  # bounded: attempts per stream


class StormStream(asyncio.Protocol):
    """One SSE stream that remembers its last id and checks the ids that follow it."""

    def __init__(self, owner: StormClient, merchant: int) -> None:
        self.owner = owner
        self.merchant = merchant
        self.last_id = ""
        self.ids = 0  # durable ids seen over every connection
        self.ids_at_reconnect = 0
        self.replayed_ns = 0  # wall clock when the missed ids had all arrived
        self.attempts = 0
        self.retry_after = 0.0  # of the last refusal
        self.open = False
        self.buf = b""
        self.headers_done = False
        self.first_frame: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def request(self) -> bytes:
        o = self.owner.args
        lei = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        return (f"GET {o.path}?shop=m{self.merchant}.myshopify.com HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{o.port}\r\nAccept: text/event-stream\r\n{lei}\r\n").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf, self.headers_done = b"", False
        transport.write(self.request())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.transport = None
        if not self.first_frame.done():
            self.first_frame.set_result("lost")

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.headers_done:
            head = response_head(buf)
            if head is None:
                self.buf = buf
                return
            status, self.retry_after, body = head
            if status != "200":
                self.owner.count(f"status_{status}")
                j = buf.find(b'"message"', body)
                if j >= 0:  # why: counted per refusal message
                    self.owner.count(buf[j + 12:buf.find(b'"', j + 12)].decode(errors="replace"))
                if not self.first_frame.done():
                    self.first_frame.set_result(status)
                if self.transport is not None:
                    self.transport.close()
                return
            self.headers_done = True
            buf = buf[body:]
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2:]
        for frame in buf[:end].split(b"\n\n"):
            self.frame(frame)
        if not self.first_frame.done():
            self.open = True
            self.first_frame.set_result("ready")

    def frame(self, frame: bytes) -> None:
        # the response body is chunked: chunk-size lines sit between frames, and
        # a frame's first line is recognised by its field name
        resync = False
        for line in frame.split(b"\n"):
            if line.startswith(b"id: "):
                self.on_id(line[4:].strip().decode())
            elif line == b"event: resync":
                resync = True
                self.owner.count("resync")
            elif resync and line.startswith(b"data: "):
                reason = json.loads(line[6:]).get("reason")
                self.owner.count(f"resync_{reason}")

    def on_id(self, new: str) -> None:
        epoch, _, offset = new.rpartition(":")
        if self.last_id:
            old_epoch, _, old = self.last_id.rpartition(":")
            if epoch != old_epoch or int(offset) != int(old) + 1:
                self.owner.count("out_of_order")
        self.last_id = new
        self.ids += 1
        if (not self.replayed_ns and self.ids_at_reconnect
                and self.ids - self.ids_at_reconnect >= self.owner.args.missed):
            self.replayed_ns = time.time_ns()


class StormClient:
    """The command loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: dict[str, int] = {}
        self.streams: list[StormStream] = []
        self.cpu0 = cpu_seconds()
        self.t0_ns = 0
        self.reconnects: set[asyncio.Task[None]] = set()

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def connect(self, s: StormStream, sem: asyncio.Semaphore | None) -> None:
        """Open ``s`` (bounded attempts); a refusal or a failed connect is retried."""
        loop = asyncio.get_running_loop()
        while s.attempts < MAX_ATTEMPTS:
            s.attempts += 1
            s.first_frame = loop.create_future()
            try:
                async with sem or contextlib.nullcontext():
                    await loop.create_connection(lambda: s, "127.0.0.1", self.args.port,
                                                 local_addr=self.local_addr())
                    outcome = await asyncio.wait_for(asyncio.shield(s.first_frame), 30)
            except (OSError, TimeoutError):
                self.count("connect_failed")
                outcome = "failed"
            if outcome == "ready":
                return
            if s.transport is not None:
                s.transport.close()
            # like gateway-events.js: a refusal is retried after Retry-After (or 1 s),
            # jittered so that the retries do not arrive as one second storm
            delay = s.retry_after or (1.0 if outcome != "failed" else RETRY_S)
            s.retry_after = 0.0
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        self.count("gave_up")

    def local_addr(self) -> tuple[str, int] | None:
        """The source address to bind (``--source-ip``: one per client process)."""
        ip = getattr(self.args, "source_ip", "")
        return (ip, 0) if ip else None

    async def command(self, parts: list[str]) -> dict:
        """A command this client does not know (a subclass adds its own)."""
        return {"phase": "error", "error": f"unknown command {parts[0]!r}"}

    async def cmd_open(self) -> dict:
        a = self.args
        self.streams = [StormStream(self, i % a.merchants) for i in range(a.streams)]
        sem = asyncio.Semaphore(200)
        t0 = time.monotonic()
        await asyncio.gather(*(self.connect(s, sem) for s in self.streams))
        ready = sum(s.open for s in self.streams)
        return {"phase": "ready", "ready": ready, "open_s": round(time.monotonic() - t0, 2)}

    async def cmd_expect(self, k: int) -> dict:
        end = time.monotonic() + self.args.timeout
        while time.monotonic() < end and any(s.ids < k for s in self.streams):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return self.result(k)

    def cmd_reconnect(self, t0_ns: int) -> dict:
        self.t0_ns = t0_ns
        for s in self.streams:
            s.ids_at_reconnect, s.replayed_ns, s.attempts = s.ids, 0, 0
            task = asyncio.ensure_future(self.connect(s, None))  # all at once: the storm
            self.reconnects.add(task)
            task.add_done_callback(self.reconnects.discard)
        return {"phase": "reconnecting"}

    def result(self, k: int) -> dict:
        done = [s for s in self.streams if s.ids >= k]
        replay = [s.replayed_ns - self.t0_ns for s in self.streams if s.replayed_ns]
        return {
            "phase": "result", "expected_ids": k, "streams": len(self.streams),
            "complete": len(done), "open": sum(s.open for s in self.streams),
            "counts": self.counts, "replayed": len(replay),
            "replay_hist": from_samples(replay), "replay_max_ns": max(replay, default=0),
            "attempts_max": max((s.attempts for s in self.streams), default=0),
            "client_cpu_s": round(cpu_seconds() - self.cpu0, 2),
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            parts = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not parts or parts[0] == "quit":
                break
            if parts[0] == "open":
                emit(await self.cmd_open())
            elif parts[0] == "expect":
                emit(await self.cmd_expect(int(parts[1])))
            elif parts[0] == "reconnect":
                emit(self.cmd_reconnect(int(parts[1])))
            else:
                emit(await self.command(parts))
        for s in self.streams:
            if s.transport is not None:
                s.transport.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storm_client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/api/realtime/events")
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--merchants", type=int, default=1000)
    p.add_argument("--missed", type=int, default=20, help="ids each stream must get back")
    p.add_argument("--timeout", type=float, default=60, help="s an expect may wait")
    run_client(StormClient(p.parse_args(argv)).run())


if __name__ == "__main__":
    main()
