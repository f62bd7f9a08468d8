"""Lean SSE load client, run in its own process(es) by ``python -m bench``.

The parent drives it with one command per stdin line; it answers with one JSON
object per stdout line:

- ``open K``: open streams until K are open (round-robin over M merchants,
  stream ``offset + i`` on merchant ``(offset + i) % M``) -> ``ready`` / ``error``
- ``listen``: zero the counters and start a measured window -> ``listening``
- ``publish R D``: publish R msg/s for D s (needs ``--publish``) -> ``published``
- ``expect F P``: messages F..F+P-1 were published; wait until this process's
  share arrived (or ``--drain`` s) -> ``result`` with a latency histogram
- ``quit`` (or EOF): close every stream and exit.

Several of these processes, each with its own source address (127.0.0.x, so
ephemeral ports never run out), together hold more streams than one process
may (open files are capped per process). Frames are found by ``\\n\\n`` and the
send time by searching ``"t":`` in the payload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time

from bench import hist
from bench.client_proc import emit
from bench.publishers import Publisher
from bench.streams import Stats, Stream, cpu_seconds, expected_count, run_client

__all__ = ["Client", "main"]

class Client:
    """The command loop of one client process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.per_merchant = [0] * args.merchants
        self.conns: list[asyncio.Transport] = []
        self.started = 0
        self.publisher: Publisher | None = None
        self.cpu0 = 0.0
        self.wall0 = 0.0
        self.listen_ns = 0

    async def open_one(self, idx: int, sem: asyncio.Semaphore) -> None:
        a, loop = self.args, asyncio.get_running_loop()
        mi = idx % a.merchants
        self.per_merchant[mi] += 1
        path = a.path_template.format(i=mi)
        req = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        local = (a.source_ip, 0) if a.source_ip else None
        st = self.stats.status
        for attempt in range(a.retries + 1):
            async with sem:
                try:
                    tr, proto = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: Stream(req, self.stats, a.wait_frame), "127.0.0.1", a.port,
                            local_addr=local,
                        ),
                        10,
                    )
                except (OSError, TimeoutError):
                    st["connect_error"] = st.get("connect_error", 0) + 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                try:
                    outcome = await asyncio.wait_for(asyncio.shield(proto.done), 30)
                except TimeoutError:
                    outcome = "timeout"
                if outcome == "ready":
                    self.conns.append(tr)  # type: ignore[arg-type]
                    return
                tr.close()
                if outcome not in ("503", "429", "lost", "timeout"):
                    return  # a permanent refusal: reported in status
                wait = min(max(proto.retry_after, 0.2), 5.0)
            await asyncio.sleep(wait)  # outside the semaphore, like a browser's retry

    async def cmd_open(self, target: int) -> dict:
        a = self.args
        target = min(target, a.streams)
        sem = asyncio.Semaphore(a.connect_concurrency)
        t0 = time.monotonic()
        idxs = range(a.offset + self.started, a.offset + target)
        self.started = max(self.started, target)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self.open_one(i, sem) for i in idxs)), a.ready_timeout
            )
        info = {"streams": target, "opened": len(self.conns), "ready": self.stats.ready,
                "status": self.stats.status, "open_s": round(time.monotonic() - t0, 3)}
        if self.stats.ready < target:
            return {"phase": "error", "error": "streams not ready", **info}
        return {"phase": "ready", **info}

    def cmd_listen(self) -> dict:
        s = self.stats
        s.latencies.clear()
        s.delivered = s.parse_errors = s.closed = 0
        s.last_recv = 0
        gc.collect()
        gc.freeze()
        gc.disable()  # no collector pauses inside the measured window
        self.cpu0, self.wall0, self.listen_ns = cpu_seconds(), time.monotonic(), time.time_ns()
        return {"phase": "listening"}

    async def cmd_publish(self, rate: float, duration: float) -> dict:
        a = self.args
        if self.publisher is None:
            self.publisher = Publisher(a.publish, a.merchants, a.redis_url, a.pub_port, a.payload)
            await self.publisher.start()
        t0_ns, w0 = time.time_ns(), time.monotonic()
        first, sent = await self.publisher.window(rate, duration)
        return {"phase": "published", "first": first, "published": sent,
                "batches": self.publisher.batches,
                "publish_s": round(time.monotonic() - w0, 3), "publish_start_ns": t0_ns,
                **self.publisher.extra()}

    async def cmd_expect(self, first: int, n: int) -> dict:
        s = self.stats
        expected = expected_count(self.per_merchant, first, n)
        drain_end = time.monotonic() + self.args.drain
        while s.delivered < expected and time.monotonic() < drain_end:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        wall = time.monotonic() - self.wall0
        cpu = cpu_seconds() - self.cpu0
        lat = s.latencies
        gc.enable()
        gc.unfreeze()
        return {
            "phase": "result", "expected": expected, "delivered": s.delivered,
            "closed_during": s.closed, "open_status": s.status, "parse_errors": s.parse_errors,
            "wall_s": round(wall, 3), "client_cpu_s": round(cpu, 3),
            "last_recv_ns": s.last_recv, "listen_ns": self.listen_ns,
            "hist": hist.from_samples(lat), "max_ns": max(lat) if lat else 0,
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                parts = line.split()
                if not parts or parts[0] == "quit":
                    return
                cmd, argv = parts[0], parts[1:]
                if cmd == "open":
                    emit(await self.cmd_open(int(argv[0])))
                elif cmd == "listen":
                    emit(self.cmd_listen())
                elif cmd == "publish":
                    emit(await self.cmd_publish(float(argv[0]), float(argv[1])))
                elif cmd == "expect":
                    emit(await self.cmd_expect(int(argv[0]), int(argv[1])))
                else:
                    emit({"phase": "error", "error": f"unknown command {cmd!r}"})
        finally:
            for tr in self.conns:
                tr.close()
            if self.publisher is not None:
                await self.publisher.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.client")
    p.add_argument("--port", type=int, required=True, help="stream server port")
    p.add_argument("--path-template", required=True, help="e.g. /sub/m{i}")
    p.add_argument("--streams", type=int, default=2000, help="streams this process may open")
    p.add_argument("--offset", type=int, default=0, help="global index of the first stream")
    p.add_argument("--merchants", type=int, default=200)
    p.add_argument("--drain", type=float, default=5)
    p.add_argument("--publish", choices=["redis", "durable", "durable-http", "nchan"],
                   default="redis")
    p.add_argument("--redis-url", default="")
    p.add_argument("--pub-port", type=int, default=0)
    p.add_argument("--payload", type=int, default=0, help="bytes of padding per message")
    p.add_argument("--source-ip", default="", help="bind streams to this 127.x.y.z")
    p.add_argument("--wait-frame", action="store_true", help="ready only after a first frame")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--ready-timeout", type=float, default=150)
    p.add_argument("--retries", type=int, default=5, help="retries of a 503/429/failed open")
    run_client(Client(p.parse_args(argv)).run())
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
