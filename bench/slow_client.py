"""``python -m bench.slow_client``: what one stalled client costs the others.

One merchant, FAST streams that read everything and (with ``--slow``) one that
stops reading after its first frame, on a 4 KiB receive buffer. 10,000 events
(``--events``) of 10 KiB are published at 1,000/s. Prints the fast streams'
publish-to-receive latency and the gateway's RSS growth; run once with and once
without ``--slow`` to compare in the same session. Loopback only, bounded in
count and time; the gateway runs under tools/gateway.py's GatewayServer, like
every other caller, and everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bench import records
from tools.gateway import GatewayServer, child_env
from tools.services import PostgresServer, RedisServer, free_port

SHOP = "m1.myshopify.com"
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


async def fast_stream(
    url: str, events: int, latencies: list[float], ready: asyncio.Event
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"a fast stream was refused: {response.status}")
            ready.set()
            seen: list[bytes] = []
            async for line in response.content:
                if line.startswith(b'data: {"t"'):
                    event = json.loads(line[6:])
                    latencies.append(time.time() - event["t"])
                    if event["n"] == events - 1:
                        return
                elif len(seen) < 20:
                    seen.append(line[:200])
            raise RuntimeError(f"a fast stream ended before the last event; it read {seen}")


async def measure(args: argparse.Namespace, gw: GatewayServer, redis_url: str) -> dict:
    assert gw.pid is not None
    rss_before = peak = rss_bytes(gw.pid)
    target = gw.stream_url(SHOP)[len(gw.base_url) :]
    stalled = await stalled_stream(gw.port, target) if args.slow else None
    latencies: list[float] = []
    readies = [asyncio.Event() for _ in range(args.fast)]
    url = gw.stream_url(SHOP)
    readers = [
        asyncio.create_task(fast_stream(url, args.events, latencies, r)) for r in readies
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    publisher = aioredis.from_url(redis_url)
    for tick in range(args.events // PER_TICK):
        pipe = publisher.pipeline(transaction=False)
        for k in range(PER_TICK):
            n = tick * PER_TICK + k
            body = {"t": time.time(), "n": n, "jobId": f"j{n}", "pad": PAD}
            pipe.publish("merchant:m1:progress", json.dumps(body))
        await pipe.execute()
        peak = max(peak, rss_bytes(gw.pid))
        await asyncio.sleep(TICK_S)
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    await publisher.aclose()
    cut = await slow_cuts(gw)
    if stalled is not None:
        stalled.close()
    latencies.sort()
    pick = lambda q: latencies[int(q * (len(latencies) - 1))] * 1000  # noqa: E731
    print(
        f"stalled client: {'yes' if args.slow else 'no'}; {args.fast} fast streams got "
        f"{len(latencies)} events: p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; gateway RSS +{(peak - rss_before) / 2**20:.1f} MiB; "
        f"streams cut as slow: {cut}"
    )
    return {"slow": args.slow, "fast": args.fast, "events": args.events,
            "payload_kib": round(len(PAD) / 1024, 1), "received": len(latencies),
            "p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1),
            "max_ms": round(latencies[-1] * 1000, 1),
            "rss_growth_mib": round((peak - rss_before) / 2**20, 1), "cut": cut}


def wait_healthy(gw: GatewayServer, timeout_s: float = 30) -> None:
    """Until GET /health answers 200. `gw.start()` waits for /health/live only: the
    subscriber may still be connecting to Redis, and a stream opened meanwhile gets 503."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(gw.url("/health"), timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # 503 (not ready yet) or not answering
        time.sleep(0.05)
    raise RuntimeError(f"the gateway was not healthy within {timeout_s:g} s")


async def slow_cuts(gw: GatewayServer) -> int:
    """gateway_slow_client_disconnects_total from /metrics."""
    async with aiohttp.ClientSession() as session, session.get(gw.url("/metrics")) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("gateway_slow_client_disconnects_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("/metrics has no gateway_slow_client_disconnects_total")


def _events(text: str) -> int:
    n = int(text)
    if n < PER_TICK or n % PER_TICK:
        raise argparse.ArgumentTypeError(f"a positive multiple of {PER_TICK}")
    return n


def passed(row: dict) -> bool:
    """The report's bound: every fast stream got every event, stalled client or not."""
    return row["received"] == row["fast"] * row["events"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_client", description=__doc__)
    parser.add_argument("--fast", type=int, default=5, help="fast streams [5]")
    parser.add_argument("--slow", action="store_true", help="add one stalled stream")
    parser.add_argument(
        "--events", type=_events, default=10_000, help="events published, 1,000/s [10000]"
    )
    parser.add_argument("--record", default=str(records.DOCS / "slow_client.jsonl"),
                        help="bench record to write the row to ('' = none)")
    args = parser.parse_args()
    with RedisServer() as redis_server, PostgresServer() as postgres:
        postgres.apply_schema()
        postgres.add_merchant("m1", SHOP)
        config = {
            "server": {"host": "127.0.0.1", "port": free_port()},
            "logging": {"level": "INFO"},  # a stream's open and close: for a failed run
        }
        env = child_env({"REDIS_URL": redis_server.url, "DATABASE_URL": postgres.dsn})
        gw = GatewayServer(config, env)
        try:
            gw.start()
            wait_healthy(gw)
            row = asyncio.run(measure(args, gw, redis_server.url))
        except Exception:
            print(f"gateway log tail:\n{gw.log_text()[-2000:]}")
            raise
        finally:
            gw.stop()  # SIGTERM by PID, then SIGKILL; removes its temp dir and log
    ok = passed(row)
    print(f"{'OK' if ok else 'FAILED'}: every fast stream got every event")
    if args.record:
        print("record:", records.write("slow_client", [row], Path(args.record),
                                       records.command("bench.slow_client", sys.argv[1:]),
                                       vars(args)))
    return 0 if ok else 1  # a FAILED report is a failed run


if __name__ == "__main__":
    sys.exit(main())
