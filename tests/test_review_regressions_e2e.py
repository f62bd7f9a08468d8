"""Regressions from the code review: faults that must not silently lose events or hang."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from typing import Any

import redis.asyncio as aioredis

from tests.support import http_json, open_stream, publish, wait_for, wait_until


async def test_replay_across_a_redis_reconnect_is_a_gap(
    redis_factory: Any, postgres_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """Messages published while the subscriber was reconnecting were never seen:
    a client resuming from an id before that point must get resync, not a silent replay."""
    redis_server = redis_factory()
    gw = gateway_factory.start(redis=redis_server)
    merchant_id, shop = merchant
    channel = f"merchant:{merchant_id}:progress"
    async with open_stream(gw.stream_url(shop)) as first:
        await first.next_event_of("connected")
        await publish(redis_server.url, channel, {"jobId": "a", "n": 1})
        seen = await first.next_event_of("progress")
    client = aioredis.from_url(redis_server.url)
    try:
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await publish(redis_server.url, f"merchant:{merchant_id}:completion", {"jobId": "a"})

        async def reconnected() -> bool:
            status, _, body = await http_json(gw.url("/metrics"))
            return status == 200 and "gateway_redis_reconnects_total 1.0" in str(body)

        await wait_for(reconnected, timeout=15)
        await wait_for(lambda: _health_ok(gw), timeout=15)
    finally:
        await client.aclose()
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": seen.id}) as again:
        await again.next_event_of("connected")
        resync = await again.next_event(timeout=5)
        assert resync.event == "resync"
        assert json.loads(resync.data) == {"reason": "history_gap"}


def _stalled_stream(gw: Any, shop: str) -> socket.socket:
    """A stream that reads its headers, then never reads again (4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(f"GET {gw.path}?shop={shop} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    sock.recv(4096)
    return sock


def _messages_received(gw: Any) -> float:
    with urllib.request.urlopen(gw.url("/metrics"), timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_redis_messages_total"))


async def _health_ok(gw: Any) -> bool:
    status, _, _ = await http_json(gw.url("/health"))
    return status == 200


async def test_a_payload_nested_too_deep_never_stops_fan_out(
    redis_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting; a lagging
    stream's coalescing parses payloads, so that must not reach the shared reader."""
    gw = gateway_factory.start(config={"sse": {"max_queue": 100_000}})
    merchant_id, shop = merchant
    lagging = _stalled_stream(gw, shop)
    try:
        async with open_stream(gw.stream_url(shop)) as healthy:
            await healthy.next_event_of("connected")
            big = "x" * 10_000
            for _ in range(1000):  # fill the lagging client's socket so it queues
                await publish(redis_server.url, f"merchant:{merchant_id}:stage", big)
            await publish(redis_server.url, f"merchant:{merchant_id}:progress", "[" * 100_000)
            await publish(redis_server.url, f"merchant:{merchant_id}:stage", "after")
            while (event := await healthy.next_event(timeout=10)).data != "after":
                assert event.event != "resync", "the reader died and reconnected"
        _, _, body = await http_json(gw.url("/metrics"))
        assert "gateway_redis_reconnects_total 0.0" in str(body)
    finally:
        lagging.close()


def test_shutdown_cuts_a_stream_that_cannot_drain(
    redis_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """A client that stopped reading must not hold the process past shutdown_timeout."""
    import redis

    # the stalled stream queues everything (never cut as slow): only the drain can end it
    sse = {"max_queue": 100_000, "max_queue_bytes": 64 << 20}
    gw = gateway_factory.start(config={"server": {"shutdown_timeout": 3}, "sse": sse})
    merchant_id, shop = merchant
    stuck = _stalled_stream(gw, shop)
    try:
        client = redis.Redis.from_url(redis_server.url)
        for _ in range(300):
            client.publish(f"merchant:{merchant_id}:stage", "x" * 10_000)
        client.close()
        # every message reached the stream's queue before the signal (not a race with it)
        wait_until(lambda: _messages_received(gw) >= 300, timeout=20,
                   message="(300 messages in the gateway)")
        started = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        assert "reason=drain_timeout" in gw.log_text()
    finally:
        stuck.close()


def test_redis_error_that_is_not_a_fault_is_logged_and_retried(
    redis_factory: Any, gateway_factory: Any
) -> None:
    """SELECT 99 fails with a ResponseError: the supervisor must log it and keep trying."""
    redis_server = redis_factory()
    gw = gateway_factory.start(env={"REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/99"})
    deadline = time.monotonic() + 10
    while "subscriber connection failed" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "subscriber connection failed" in gw.log_text()
    assert gw.live()
    assert gw.returncode is None
