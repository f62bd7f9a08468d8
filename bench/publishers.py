"""Publishers used by the load client: pipelined Redis PUBLISH, durable publishes
(`gateway/durable/publish.lua` run by the Python helper, pipelined), the same
events as one JSON array per tick through the gateway's `POST .../publish`
(``durable-http``), or nchan HTTP POSTs.

Message ``k`` goes to merchant ``m{k % M}`` with payload
``{"jobId":"j{k}","t":<time_ns>,"seq":k}`` (every jobId unique: never coalesced).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["PUBLISH_KEY", "PipelinedHttp", "Publisher", "payload", "publish_loop"]

PUBLISH_KEY = "bench-publish-key-0123456789"  # auth.publish_key of a gateway taking HTTP publishes


def payload(k: int, pad: bytes = b"") -> bytes:
    """The message body; ``pad`` makes it bigger (bench --payload)."""
    if pad:
        return b'{"jobId":"j%d","t":%d,"seq":%d,"pad":"%s"}' % (k, time.time_ns(), k, pad)
    return b'{"jobId":"j%d","t":%d,"seq":%d}' % (k, time.time_ns(), k)


async def publish_loop(
    rate: float,
    duration: float,
    send_batch: Callable[[int, int], Awaitable[None]],
    first: int = 0,
    tick: float = 0.005,
) -> int:
    """Publish ``rate`` msg/s for ``duration`` s in timed batches; returns the count sent.

    Message numbers start at ``first`` so that successive windows never reuse a jobId.
    """
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
            await send_batch(first + sent, first + due)
            sent = due
        await asyncio.sleep(tick)
    return sent


class PipelinedHttp(asyncio.Protocol):
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


def _publish_request(host: str, events: list[tuple[str, bytes]]) -> bytes:
    """One POST of the gateway's publish API: `progress` events as a JSON array."""
    body = b"[" + b",".join(b'{"merchantId":"%s","event":"progress","data":%s}' % (
        merchant.encode(), data) for merchant, data in events) + b"]"
    return (f"POST /api/realtime/events/publish HTTP/1.1\r\n{host}"
            f"Authorization: Bearer {PUBLISH_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _nchan_request(host: str, channel: str, body: bytes) -> bytes:
    """One POST of nchan's publisher endpoint: one message."""
    return (f"POST /pub/{channel} HTTP/1.1\r\n{host}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Publisher:
    """One publishing connection (Redis or nchan), reused across windows."""

    def __init__(self, kind: str, merchants: int, redis_url: str = "", pub_port: int = 0,
                 pad: int = 0) -> None:
        self.kind = kind
        self.m = merchants
        self.redis_url = redis_url
        self.pub_port = pub_port
        self.pad = b"x" * pad
        self.next_k = 0
        self.sent_total = 0
        self.batches = 0  # pipelines / HTTP write bursts sent (a gateway wakes once per batch)
        self._r = None
        self._durable = None  # gateway.publisher.AsyncPublisher for kind "durable"
        self._tr: asyncio.Transport | None = None
        self._proto: PipelinedHttp | None = None

    async def start(self) -> None:
        if self.kind in ("redis", "durable"):
            import redis.asyncio as aioredis

            self._r = aioredis.Redis.from_url(self.redis_url)
            await self._r.ping()
            if self.kind == "durable":
                from gateway.durable.publisher import SCRIPT, AsyncPublisher

                await self._r.script_load(SCRIPT)
                self._durable = AsyncPublisher(self._r)
        else:
            loop = asyncio.get_running_loop()
            self._tr, self._proto = await loop.create_connection(
                PipelinedHttp, "127.0.0.1", self.pub_port
            )

    async def send_batch(self, a: int, b: int) -> None:
        m, pad = self.m, self.pad
        self.batches += 1
        if self._durable is not None:  # one pipeline of publish.lua runs
            await self._durable.publish_many(
                [(f"m{k % m}", "progress", payload(k, pad)) for k in range(a, b)])
            return
        if self._r is not None:
            pipe = self._r.pipeline(transaction=False)
            for k in range(a, b):
                pipe.publish(f"merchant:m{k % m}:progress", payload(k, pad))
            await pipe.execute()
            return
        assert self._tr is not None and self._proto is not None
        host = f"Host: 127.0.0.1:{self.pub_port}\r\n"
        if self.kind == "durable-http":  # one array per tick
            requests = [_publish_request(host, [(f"m{k % m}", payload(k, pad))
                                                for k in range(a, b)])]
        else:  # nchan: one message per request
            requests = [_nchan_request(host, f"m{k % m}", payload(k, pad)) for k in range(a, b)]
        self._tr.write(b"".join(requests))
        self.sent_total += len(requests)  # requests sent: each is answered once
        proto = self._proto
        proto.backlog_max = max(proto.backlog_max, self.sent_total - proto.responses)
        for _ in range(2000):  # bounded backlog of unanswered requests
            if self.sent_total - proto.responses < 20000:
                break
            await asyncio.sleep(0.001)

    async def window(self, rate: float, duration: float) -> tuple[int, int]:
        """Publish one window; returns (first message number, count); ``batches`` counts."""
        first = self.next_k
        self.batches = 0
        sent = await publish_loop(rate, duration, self.send_batch, first)
        self.next_k = first + sent
        if self._proto is not None:  # let the responses to the last requests come back
            for _ in range(500):
                if self._proto.responses >= self.sent_total or self._proto.lost.done():
                    break
                await asyncio.sleep(0.01)
        return first, sent

    def extra(self) -> dict:
        if self._proto is None:
            return {}
        p = self._proto
        return {"publish_responses": p.responses, "publish_bad": p.bad,
                "publish_backlog_max": p.backlog_max}

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()
        if self._tr is not None:
            self._tr.close()
