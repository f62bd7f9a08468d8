"""The connect bench's load client, run in its own process by ``python -m bench.connect``.

One stdin line per command, one JSON line answered on stdout:

- ``warm M``: open one stream per merchant ``m0..m{M-1}`` and hold it (the
  merchants are then cached and subscribed) -> ``warm``
- ``ramp R D``: open new streams at R per second for D seconds, open loop
  (a stream is started when it is due, whether or not earlier ones have their
  first frame; at most ``--max-pending`` wait at once), stream ``k`` on
  merchant ``m{k % M}``; each is held open once its first frame arrived. Time
  to first frame runs from the stream's connect() call -> ``ramp``
- ``close``: close the streams of the ramps, keep the warm ones -> ``closed``
- ``quit`` (or EOF).

A refused or failed stream is counted (``status``) and not retried: the
bench measures new streams, not retries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.client_proc import emit
from bench.hist import from_samples
from bench.streams import Stats, Stream, cpu_seconds, run_client

__all__ = ["main"]

_TICK_S = 0.005
_FIRST_FRAME_TIMEOUT_S = 30.0


class TimedStream(Stream):
    """A stream that stamps when its first frame arrived."""

    __slots__ = ("t0", "t_ready")

    def __init__(self, request: bytes, stats: Stats, t0: int) -> None:
        super().__init__(request, stats, wait_frame=True)
        self.t0 = t0
        self.t_ready = 0

    def _mark_ready(self) -> None:
        if not self.is_ready:
            self.t_ready = time.perf_counter_ns()
        super()._mark_ready()


class ConnectClient:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.merchants = 1
        self.warm: list[TimedStream] = []
        self.ramped: list[TimedStream] = []
        self.next_index = 0

    def request(self, merchant: int) -> bytes:
        a = self.args
        path = a.path_template.format(i=merchant)
        return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()

    async def open_one(self, merchant: int, stats: Stats, into: list[TimedStream]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter_ns()
        stream = TimedStream(self.request(merchant), stats, t0)
        into.append(stream)
        try:
            await loop.create_connection(lambda: stream, "127.0.0.1", self.args.port)
            outcome = await asyncio.wait_for(asyncio.shield(stream.done),
                                             _FIRST_FRAME_TIMEOUT_S)
        except OSError:
            outcome = "connect_error"
        except TimeoutError:
            outcome = "timeout"
        if outcome != "ready":
            if not outcome.isdigit():  # an HTTP status is counted by the stream already
                stats.status[outcome] = stats.status.get(outcome, 0) + 1
            if stream.transport is not None:
                stream.transport.close()

    async def cmd_warm(self, merchants: int) -> dict:
        self.merchants = merchants
        stats = Stats()
        sem = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with sem:
                await self.open_one(i, stats, self.warm)

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(merchants)))
        return {"phase": "warm", "ready": stats.ready, "status": stats.status,
                "open_s": round(time.monotonic() - t0, 3)}

    async def cmd_ramp(self, rate: float, duration: float) -> dict:
        a = self.args
        total = max(1, round(rate * duration))
        stats = Stats()
        streams: list[TimedStream] = []
        tasks: set[asyncio.Task[None]] = set()
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        started = behind_max = 0
        while started < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while started < due and len(tasks) < a.max_pending:
                merchant = (self.next_index + started) % self.merchants
                task = asyncio.ensure_future(self.open_one(merchant, stats, streams))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                started += 1
            behind_max = max(behind_max, due - started)
            await asyncio.sleep(_TICK_S)
        start_s = time.perf_counter() - start
        if tasks:
            await asyncio.wait(tasks, timeout=_FIRST_FRAME_TIMEOUT_S + 5)
        self.next_index += total
        self.ramped.extend(streams)
        ready = [s for s in streams if s.t_ready]
        ttff = [s.t_ready - s.t0 for s in ready]
        last = max((s.t_ready for s in ready), default=0)
        wall = (last - int(start * 1e9)) / 1e9 if last else 0.0
        return {
            "phase": "ramp", "offered_per_s": rate, "duration_s": duration, "started": started,
            "ready": len(ready), "status": stats.status, "start_s": round(start_s, 3),
            "wall_s": round(wall, 3), "behind_max": behind_max,
            "ttff_hist": from_samples(ttff), "ttff_max_ns": max(ttff, default=0),
            "client_cpu_s": round(cpu_seconds() - cpu0, 3),
        }

    def cmd_close(self) -> dict:
        n = 0
        for stream in self.ramped:
            if stream.transport is not None:
                stream.transport.close()
                n += 1
        self.ramped.clear()
        return {"phase": "closed", "closed": n}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                parts = (await loop.run_in_executor(None, sys.stdin.readline)).split()
                if not parts or parts[0] == "quit":
                    return
                if parts[0] == "warm":
                    emit(await self.cmd_warm(int(parts[1])))
                elif parts[0] == "ramp":
                    emit(await self.cmd_ramp(float(parts[1]), float(parts[2])))
                elif parts[0] == "close":
                    emit(self.cmd_close())
                else:
                    emit({"phase": "error", "error": f"unknown command {parts[0]!r}"})
        finally:
            for stream in [*self.warm, *self.ramped]:
                if stream.transport is not None:
                    stream.transport.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.connect_client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path-template", required=True, help="e.g. /sub/m{i}")
    p.add_argument("--max-pending", type=int, default=2000,
                   help="streams waiting for their first frame at once, at most")
    run_client(ConnectClient(p.parse_args(argv)).run())


if __name__ == "__main__":
    main()
