"""The load of ``python -m bench.publish_http``: a closed loop of pipelined HTTP
requests per connection, and the requests (the gateway's job events, with or
without ``seq`` and ``key``; nchan's messages)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from bench.publishers import PUBLISH_KEY, PipelinedHttp

__all__ = ["ClosedLoop", "JobRequests", "Requests", "cycled", "drive", "nchan_requests"]



class ClosedLoop(PipelinedHttp):
    """Keeps ``depth`` pipelined requests outstanding until ``stop_at``; ``request(n)``
    is the connection's request number n."""

    def __init__(self, request: Callable[[int], bytes], depth: int, stop_at: float) -> None:
        super().__init__()
        self.request = request
        self.depth = depth
        self.stop_at = stop_at
        self.sent = 0
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.top_up()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.top_up()

    def top_up(self) -> None:
        if asyncio.get_running_loop().time() >= self.stop_at:
            if self.responses >= self.sent and not self.finished.done():
                self.finished.set_result(None)
            return
        n = self.depth - (self.sent - self.responses)
        if n > 0 and self.transport is not None:
            self.transport.write(b"".join(self.request(self.sent + i) for i in range(n)))
            self.sent += n


def cycled(requests: list[bytes]) -> Callable[[int], bytes]:
    return lambda n: requests[n % len(requests)]


class JobRequests:
    """Request n of connection ``conn``: ``batch`` job events, new each time, with or
    without ``seq`` and ``key`` (the only difference between the two)."""

    def __init__(self, port: int, batch: int, merchants: int, conn: int, keyed: bool) -> None:
        self.head = (f"POST /api/realtime/events/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Authorization: Bearer {PUBLISH_KEY}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.batch, self.merchants, self.conn, self.keyed = batch, merchants, conn, keyed

    def item(self, e: int) -> bytes:
        x, c = e % self.merchants, self.conn
        head = b'{"merchantId":"m%d","event":"progress","data":{"jobId":"c%dj%d","percent":%d}' % (
            x, c, x, e % 100)
        if self.keyed:
            return head + b',"seq":%d,"key":"c%d-%d"}' % (e // self.merchants, c, e)
        return head + b"}"

    def __call__(self, n: int) -> bytes:
        items = [self.item(n * self.batch + j) for j in range(self.batch)]
        body = items[0] if self.batch == 1 else b"[" + b",".join(items) + b"]"
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def nchan_requests(port: int, merchants: int, variants: int = 64) -> list[bytes]:
    out = []
    for v in range(variants):
        body = json.dumps({"jobId": f"j{v}", "percent": v % 100}, separators=(",", ":")).encode()
        out.append(f"POST /pub/m{v % merchants} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                   + body)
    return out


Requests = Callable[[int], Callable[[int], bytes]]  # connection number -> its requests


async def drive(port: int, requests: Requests, conns: int, depth: int,
                duration: float) -> tuple[int, int, float]:
    """(2xx responses, other responses, seconds) of a closed loop on ``conns`` connections."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    protos = []
    for c in range(conns):
        _, proto = await loop.create_connection(
            lambda c=c: ClosedLoop(requests(c), depth, stop_at), "127.0.0.1", port)  # type: ignore[misc]
        protos.append(proto)
    t0 = loop.time()
    await asyncio.wait([p.finished for p in protos], timeout=duration + 30)
    wall = loop.time() - t0
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    ok = sum(p.responses - p.bad for p in protos)
    return ok, sum(p.bad for p in protos), wall
