"""Lean SSE load client, run in its own process by ``python -m bench``.

Protocol with the orchestrator (one JSON object per stdout line):

1. opens N streams round-robin over M merchants and prints
   ``{"phase": "ready", ...}`` once every stream has seen its first frame
   (or ``{"phase": "error", ...}`` if that does not happen in time);
2. waits for a line ``go`` on stdin, publishes R msg/s for D seconds, waits
   for delivery to finish (bounded by ``--drain``), and prints
   ``{"phase": "result", ...}``; then exits, closing every stream.

Parsing is kept minimal: frames are found by ``\\n\\n`` and the send time by
searching for ``"t":`` in the payload ``{"jobId":"j{k}","t":<ns>,"seq":k}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import sys
import time

T_KEY = b'"t":'


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stats:
    __slots__ = ("closed", "delivered", "last_recv", "latencies", "parse_errors", "ready", "status")

    def __init__(self) -> None:
        self.ready = 0
        self.closed = 0
        self.delivered = 0
        self.parse_errors = 0
        self.latencies: list[int] = []
        self.last_recv = 0
        self.status: dict[str, int] = {}


class Stream(asyncio.Protocol):
    """One SSE stream: counts frames carrying ``"t":`` and records latency."""

    __slots__ = (
        "buf",
        "done",
        "headers_done",
        "is_ready",
        "request",
        "retry_after",
        "stats",
        "transport",
        "wait_frame",
    )

    def __init__(self, request: bytes, stats: Stats, wait_frame: bool) -> None:
        self.request = request
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.retry_after = 1.0
        self.stats = stats
        self.wait_frame = wait_frame
        self.buf = b""
        self.headers_done = False
        self.is_ready = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_ready:
            self.stats.closed += 1
        elif not self.done.done():
            self.done.set_result("lost")
        self.transport = None

    def _mark_ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.stats.ready += 1
            if not self.done.done():
                self.done.set_result("ready")

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.headers_done:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            status = buf[9:12].decode("latin-1", "replace")
            st = self.stats.status
            st[status] = st.get(status, 0) + 1
            if status != "200":
                self.buf = b""
                k = buf.lower().find(b"retry-after:", 0, i)
                if k >= 0:
                    e = buf.find(b"\r\n", k)
                    try:
                        self.retry_after = float(buf[k + 12 : e])
                    except ValueError:
                        pass
                if not self.done.done():
                    self.done.set_result(status)
                if self.transport is not None:
                    self.transport.close()
                return
            self.headers_done = True
            if not self.wait_frame:
                self._mark_ready()
            buf = buf[i + 4 :]
        # a frame ends with an empty line: "\n\n" or "\r\n\r\n" (aiohttp-sse)
        end = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :].lstrip(b"\n")
        if not self.is_ready:
            self._mark_ready()
        i = buf.find(T_KEY, 0, end)
        if i < 0:
            return
        stats = self.stats
        lat = stats.latencies
        n = 0
        while i >= 0:
            j = buf.find(b",", i + 4)
            try:
                lat.append(now - int(buf[i + 4 : j]))
                n += 1
            except ValueError:
                stats.parse_errors += 1
            i = buf.find(T_KEY, j, end)
        stats.delivered += n
        stats.last_recv = now


class NchanPublisher(asyncio.Protocol):
    """Pipelined HTTP/1.1 POSTs on one keep-alive connection; counts responses."""

    def __init__(self) -> None:
        self.buf = b""
        self.responses = 0
        self.bad = 0
        self.backlog_max = 0
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            head = buf[:i].lower()
            k = head.find(b"content-length:")
            if k >= 0:
                e = head.find(b"\r\n", k)
                length = int(head[k + 15 : e if e >= 0 else len(head)])
                if len(buf) < i + 4 + length:
                    break
                buf = buf[i + 4 + length :]
            elif b"chunked" in head:
                z = buf.find(b"\r\n0\r\n\r\n", i)
                if z < 0:
                    break
                buf = buf[z + 7 :]
            else:
                buf = buf[i + 4 :]
            if not head.startswith((b"http/1.1 2", b"http/1.0 2")):
                self.bad += 1
            self.responses += 1
        self.buf = buf


def payload(k: int) -> bytes:
    return b'{"jobId":"j%d","t":%d,"seq":%d}' % (k, time.time_ns(), k)


async def publish_loop(rate: float, duration: float, send_batch, tick: float = 0.005) -> int:
    """Publish ``rate`` msg/s for ``duration`` s in timed batches; returns count sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * duration)
    sent = 0
    while sent < total:
        elapsed = loop.time() - start
        if elapsed > duration * 3 + 10:  # hard bound if the sink blocks
            break
        due = min(total, int(rate * elapsed) + 1)
        if due > sent:
            await send_batch(sent, due)
            sent = due
        await asyncio.sleep(tick)
    return sent


async def run(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stats = Stats()
    n, m = args.streams, args.merchants
    per_merchant = [0] * m
    conns: list[asyncio.Transport] = []
    sem = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(idx: int) -> None:
        mi = idx % m
        per_merchant[mi] += 1
        path = args.path_template.format(i=mi)
        req = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        for attempt in range(args.retries + 1):
            async with sem:
                try:
                    tr, proto = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: Stream(req, stats, args.wait_frame), "127.0.0.1", args.port
                        ),
                        10,
                    )
                except (OSError, TimeoutError):
                    stats.status["connect_error"] = stats.status.get("connect_error", 0) + 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                try:
                    outcome = await asyncio.wait_for(asyncio.shield(proto.done), 30)
                except TimeoutError:
                    outcome = "timeout"
                if outcome == "ready":
                    conns.append(tr)  # type: ignore[arg-type]
                    return
                tr.close()
                if outcome not in ("503", "429", "lost", "timeout"):
                    return  # a permanent refusal: reported in status
                wait = min(max(proto.retry_after, 0.2), 5.0)
            await asyncio.sleep(wait)  # outside the semaphore, like a browser's retry

    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(n))), args.ready_timeout)
    info = {
        "streams": n,
        "opened": len(conns),
        "ready": stats.ready,
        "status": stats.status,
        "open_s": round(time.monotonic() - t0, 3),
    }
    if stats.ready < n:
        emit({"phase": "error", "error": "streams not ready", **info})
        return {}
    emit({"phase": "ready", **info})

    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return {}

    # publisher
    pub_close = None
    if args.publish == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(args.redis_url)
        await r.ping()

        async def send_batch(a: int, b: int) -> None:
            pipe = r.pipeline(transaction=False)
            for k in range(a, b):
                pipe.publish(f"merchant:m{k % m}:progress", payload(k))
            await pipe.execute()

        pub_close = r.aclose
    else:
        tr, proto = await loop.create_connection(NchanPublisher, "127.0.0.1", args.pub_port)
        host = f"Host: 127.0.0.1:{args.pub_port}\r\n"

        async def send_batch(a: int, b: int) -> None:
            parts = []
            for k in range(a, b):
                body = payload(k)
                parts.append(
                    f"POST /pub/m{k % m} HTTP/1.1\r\n{host}Content-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                parts.append(body)
            tr.write(b"".join(parts))
            proto.backlog_max = max(proto.backlog_max, b - proto.responses)
            # bounded backlog of unanswered requests
            for _ in range(2000):
                if b - proto.responses < 20000:
                    break
                await asyncio.sleep(0.001)

        async def _close() -> None:
            # let the responses to the last requests come back
            for _ in range(500):
                if proto.responses >= published or proto.lost.done():
                    break
                await asyncio.sleep(0.01)
            tr.close()

        pub_close = _close

    stats.latencies.clear()
    stats.delivered = 0
    gc.collect()
    gc.freeze()
    gc.disable()  # no collector pauses inside the measured window
    cpu0 = cpu_seconds()
    wall0 = time.monotonic()
    t_start_ns = time.time_ns()
    published = await publish_loop(args.rate, args.duration, send_batch)
    pub_s = time.monotonic() - wall0
    expected = sum(per_merchant[k % m] for k in range(published))
    drain_end = time.monotonic() + args.drain
    while stats.delivered < expected and time.monotonic() < drain_end:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    wall = time.monotonic() - wall0
    cpu = cpu_seconds() - cpu0
    await pub_close()
    result: dict = {
        "phase": "result",
        "published": published,
        "publish_s": round(pub_s, 3),
        "expected": expected,
        "delivered": stats.delivered,
        "closed_during": stats.closed,
        "open_status": stats.status,
        "parse_errors": stats.parse_errors,
        "wall_s": round(wall, 3),
        "client_cpu_pct": round(100 * cpu / wall, 1) if wall else 0.0,
    }
    if args.publish == "nchan":
        result["publish_responses"] = proto.responses
        result["publish_bad"] = proto.bad
        result["publish_backlog_max"] = proto.backlog_max
    span = max(pub_s, (stats.last_recv - t_start_ns) / 1e9) if stats.delivered else pub_s
    result["delivered_per_s"] = round(stats.delivered / span, 1) if span > 0 else 0.0
    lat = stats.latencies
    if lat:
        lat.sort()
        q = len(lat) - 1
        result["p50_ms"] = round(lat[q // 2] / 1e6, 2)
        result["p99_ms"] = round(lat[int(q * 0.99)] / 1e6, 2)
        result["max_ms"] = round(lat[-1] / 1e6, 2)
    for tr in conns:
        tr.close()
    return result


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.client")
    p.add_argument("--port", type=int, required=True, help="stream server port")
    p.add_argument("--path-template", required=True, help="e.g. /sub/m{i}")
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--merchants", type=int, default=200)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--drain", type=float, default=5)
    p.add_argument("--publish", choices=["redis", "nchan"], default="redis")
    p.add_argument("--redis-url", default="")
    p.add_argument("--pub-port", type=int, default=0)
    p.add_argument("--wait-frame", action="store_true", help="ready only after a first frame")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--ready-timeout", type=float, default=150)
    p.add_argument("--retries", type=int, default=5, help="retries of a 503/429/failed open")
    args = p.parse_args(argv)
    raise_nofile()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(asyncio.wait_for(run(args), args.ready_timeout + args.duration * 4 + 120))
    if result:
        emit(result)
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
