"""``python -m bench.slow_client``: what one stalled client costs the others.

One merchant, FAST streams that read everything and (with ``--slow``) one that
stops reading after its first frame, on a 4 KiB receive buffer. 10,000 events
of 10 KiB are published at 1,000/s. Prints the fast streams' publish-to-receive
latency and the gateway's RSS growth; run once with and once without
``--slow`` to compare in the same session. Loopback only, bounded in count and
time, stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from tools.services import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 10_000
PER_TICK = 50
TICK_S = 0.05
PAD = "x" * 10_200


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def stalled_stream(port: int, target: str) -> socket.socket:
    """Open a stream, read its headers, then never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await loop.sock_recv(sock, 1024)
    return sock


async def fast_stream(url: str, latencies: list[float], ready: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(url) as response:
            ready.set()
            async for line in response.content:
                if line.startswith(b'data: {"t"'):
                    event = json.loads(line[6:])
                    latencies.append(time.time() - event["t"])
                    if event["n"] == EVENTS - 1:
                        return


async def wait_live(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/health/live") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not start")


async def measure(args: argparse.Namespace, port: int, pid: int, redis_url: str) -> None:
    target = "/api/realtime/events?shop=m1.myshopify.com"
    await wait_live(port)
    rss_before = peak = rss_bytes(pid)
    stalled = await stalled_stream(port, target) if args.slow else None
    latencies: list[float] = []
    readies = [asyncio.Event() for _ in range(args.fast)]
    url = f"http://127.0.0.1:{port}{target}"
    readers = [asyncio.create_task(fast_stream(url, latencies, r)) for r in readies]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    publisher = aioredis.from_url(redis_url)
    for tick in range(EVENTS // PER_TICK):
        pipe = publisher.pipeline(transaction=False)
        for k in range(PER_TICK):
            n = tick * PER_TICK + k
            body = {"t": time.time(), "n": n, "jobId": f"j{n}", "pad": PAD}
            pipe.publish("merchant:m1:progress", json.dumps(body))
        await pipe.execute()
        peak = max(peak, rss_bytes(pid))
        await asyncio.sleep(TICK_S)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    await publisher.aclose()
    if stalled is not None:
        stalled.close()
    latencies.sort()
    pick = lambda q: latencies[int(q * (len(latencies) - 1))] * 1000  # noqa: E731
    print(
        f"stalled client: {'yes' if args.slow else 'no'}; {args.fast} fast streams got "
        f"{len(latencies)} events: p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; gateway RSS +{(peak - rss_before) / 2**20:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_client", description=__doc__)
    parser.add_argument("--fast", type=int, default=5, help="fast streams [5]")
    parser.add_argument("--slow", action="store_true", help="add one stalled stream")
    args = parser.parse_args()
    with RedisServer() as redis_server, PostgresServer() as postgres:
        postgres.apply_schema(str(ROOT / "config" / "schema.sql"))
        postgres.add_merchant("m1", "m1.myshopify.com")
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as cfg:
            cfg.write(f"server: {{host: 127.0.0.1, port: {port}}}\nlogging: {{level: WARNING}}\n")
            cfg.flush()
            env = dict(os.environ, REDIS_URL=redis_server.url, DATABASE_URL=postgres.dsn)
            cmd = [sys.executable, "-m", "gateway", "--config", cfg.name]
            gateway = subprocess.Popen(cmd, env=env, cwd=ROOT)
            try:
                asyncio.run(measure(args, port, gateway.pid, redis_server.url))
            finally:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(30)


if __name__ == "__main__":
    main()
