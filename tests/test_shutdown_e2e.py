# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""Graceful shutdown (SIGTERM) and admission control end to end (README.md "Faults")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from delivery_support import stalled_stream
from ops_support import get_health, poll
from support import SSEStream, open_stream, stream_session, unique_merchant, wait_until

SHUTDOWN_EVENT = b'event: shutdown\ndata: {"reason":"shutdown"}\n\n'
_RETRY_BEFORE_SHUTDOWN = re.compile(rb"retry: (\d+)\nevent: shutdown\ndata: ")


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(max(soft, want), hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want, "RLIMIT_NOFILE too low"


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 response that has a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.IGNORECASE)
    assert length, head
    return head, await reader.readexactly(int(length[1]))


async def _wait_exit(gw: Any, timeout: float) -> tuple[int, float]:
    """(exit code, seconds since now) without blocking the event loop."""
    started = time.monotonic()
    rc = await asyncio.to_thread(gw.wait, timeout)
    return rc, time.monotonic() - started


async def test_sigterm_streams_get_jittered_shutdown_and_exit_0(postgres_server, gateway_factory):
    shutdown_timeout, retry_ms = 5, 1000
    merchants = [unique_merchant("sd") for _ in range(2)]
    for mid, shop in merchants:
        postgres_server.add_merchant(mid, shop)
    gw = await gateway_factory.astart(
        config={"server": {"shutdown_timeout": shutdown_timeout}, "sse": {"retry_ms": retry_ms}}
    )
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(gw.stream_url(merchants[i % 2][1])))
            for i in range(8)
        ]
        for s in streams:
            assert s.status == 200
            first = await s.next_event(timeout=5)
            assert first.event == "connected" and first.retry == retry_ms, first
        status, body, _ = await get_health(gw)
        assert status == 200 and body["connections"] == 8, body

        signalled = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        retries = []
        for s in streams:
            ev = await s.next_event_of("shutdown", timeout=shutdown_timeout)
            assert ev.json() == {"reason": "shutdown"}, ev
            # `retry:` travels in the same block, before the event
            assert ev.fields[0][0] == "retry" and ev.retry is not None, ev.fields
            retries.append(ev.retry)
            await s.wait_closed(timeout=shutdown_timeout)
            assert s.closed
        rc, _ = await _wait_exit(gw, shutdown_timeout + 5)
        took = time.monotonic() - signalled
    print(f"\nSIGTERM, 8 streams: exit {rc} after {took:.3f}s; retry values {sorted(retries)}")
    assert rc == 0, gw.log_text()[-3000:]
    assert took < shutdown_timeout, took
    # jittered across the drain window: not one storm
    assert len(set(retries)) > 1, retries
    assert all(0 < r <= shutdown_timeout * 1000 for r in retries), retries
    log = gw.log_text()
    # the documented order: readiness 503, the listener closes, the streams are told
    assert log.index("draining: readiness is now 503") < log.index("listener closed") \
        < log.index("streams told to reconnect")
    assert "redis and postgres released" in log, log[-2000:]


@pytest.mark.timeout(60)
async def test_sigterm_readiness_503_while_draining(redis_factory, gateway_factory):
    """A /health already in flight when SIGTERM lands answers 503 with draining.

    The listener closes together with the readiness flip, so the only way to see
    it from outside is a request in flight: Redis is frozen so the /health probe
    takes ~1.5 s, and SIGTERM arrives meanwhile. Exit stays 0 and in time even
    though Redis hangs.

    In flight, by construction rather than by polling: `GET /health/live` and
    `GET /health` go pipelined in one write on one connection. The answer to the
    first proves the gateway accepted the connection and read both requests; its
    connection handler takes the second one up in the very step that follows, before
    a signal sent after that answer can reach the gateway's loop. SIGTERM then
    lands well inside the 1.5 s the /health probe hangs on the frozen Redis.
    """
    r = redis_factory()
    shutdown_timeout = 5
    gw = await gateway_factory.astart(
        config={"server": {"shutdown_timeout": shutdown_timeout}}, redis=r
    )
    await poll(lambda: get_health(gw), lambda res: res[0] == 200, 10, what="/health 200")
    r.freeze()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(gw.host, gw.port)
        writer.write(
            f"GET /health/live HTTP/1.1\r\nHost: {gw.host}\r\n\r\n"
            f"GET /health HTTP/1.1\r\nHost: {gw.host}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        live_head, _ = await asyncio.wait_for(_read_response(reader), 5)
        assert live_head.startswith(b"HTTP/1.1 200 "), live_head
        signalled = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        raw = await asyncio.wait_for(reader.read(), shutdown_timeout)
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), raw
        body = json.loads(payload)
        assert body.get("draining") is True and body["status"] == "fail", body
        assert body["redis"]["error"] == "timeout", body  # it did hang on the frozen Redis
        rc, _ = await _wait_exit(gw, shutdown_timeout + 5)
        took = time.monotonic() - signalled
    finally:
        r.thaw()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    print(f"\nSIGTERM with Redis frozen, /health in flight: {body}; exit {rc} after {took:.3f}s")
    assert rc == 0
    assert took < shutdown_timeout


@pytest.mark.timeout(120)
async def test_sigterm_with_1000_streams(postgres_server, gateway_factory):
    n_streams, n_merchants, shutdown_timeout = 1000, 10, 10
    _raise_nofile(n_streams * 2 + 256)
    merchants = [unique_merchant("k") for _ in range(n_merchants)]
    for mid, shop in merchants:
        postgres_server.add_merchant(mid, shop)
    gw = await gateway_factory.astart(
        config={
            "server": {"shutdown_timeout": shutdown_timeout, "max_new_streams_per_s": 0},
            "sse": {"max_connections_per_merchant": n_streams, "heartbeat": 15},
        }
    )
    urls = [gw.stream_url(merchants[i % n_merchants][1]) for i in range(n_streams)]
    streams: list[SSEStream] = []
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(stream_session())
        opened = time.monotonic()
        for start in range(0, n_streams, 100):
            batch = await asyncio.gather(
                *(stack.enter_async_context(open_stream(u, session=session))
                  for u in urls[start : start + 100])
            )
            streams.extend(batch)
            await asyncio.gather(*(s.wait_raw(b"event: connected", 30) for s in batch))
        assert all(s.status == 200 for s in streams)
        open_s = time.monotonic() - opened
        status, body, _ = await get_health(gw)
        assert status == 200 and body["connections"] == n_streams, body
        assert body["merchants"] == n_merchants, body

        signalled = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        exit_task = asyncio.create_task(_wait_exit(gw, shutdown_timeout + 10))
        results = await asyncio.gather(
            *(s.wait_raw(SHUTDOWN_EVENT, shutdown_timeout + 5) for s in streams),
            return_exceptions=True,
        )
        got_all_at = time.monotonic() - signalled
        missing = [r for r in results if r is not None]
        assert not missing, f"{len(missing)} streams without shutdown: {missing[:3]!r}"
        await asyncio.gather(*(s.wait_closed(shutdown_timeout + 5) for s in streams))
        rc, _ = await exit_task
        took = time.monotonic() - signalled
    retries = []
    for s in streams:
        m = _RETRY_BEFORE_SHUTDOWN.search(bytes(s.raw))
        assert m, bytes(s.raw[-300:])
        retries.append(int(m.group(1)))
    print(
        f"\nSIGTERM, {n_streams} streams over {n_merchants} merchants (opened in {open_s:.2f}s): "
        f"all got shutdown after {got_all_at:.3f}s, exit {rc} after {took:.3f}s; "
        f"retry min/max {min(retries)}/{max(retries)} ms, {len(set(retries))} distinct"
    )
    assert rc == 0, gw.log_text()[-3000:]
    assert took < shutdown_timeout, took
    # spread over the drain window
    assert len(set(retries)) > n_streams // 4
    assert max(retries) - min(retries) > shutdown_timeout * 1000 // 4, (min(retries), max(retries))


async def test_admission_control_new_streams_per_second(postgres_server, gateway_factory):
    """New shops beyond the rate wait for a token (up to 2 s), then get 503."""
    rate, burst, wait_s = 5, 25, 2
    merchants = [unique_merchant("adm") for _ in range(burst)]
    for mid, shop in merchants:
        postgres_server.add_merchant(mid, shop)
    gw = await gateway_factory.astart(config={"server": {"max_new_streams_per_s": rate}})
    loop = asyncio.get_running_loop()

    async def try_open(session: aiohttp.ClientSession, shop: str) -> tuple[int, Any, Any, float]:
        started = loop.time()
        async with session.get(gw.stream_url(shop)) as resp:
            took = loop.time() - started
            if resp.status == 200:
                return 200, resp.headers, None, took  # leaving closes the stream
            return resp.status, resp.headers, await resp.json(), took

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        answers = await asyncio.gather(*(try_open(session, shop) for _, shop in merchants))
        admitted = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] != 200]
        print(f"\nadmission: {len(admitted)} admitted, {len(refused)} refused of {burst}")
        # the burst at once, the next ones delayed by their token, none past the wait
        assert rate < len(admitted) <= rate * (1 + wait_s) + 1, answers
        assert len(refused) >= burst - rate * (1 + wait_s) - 1, answers
        assert max(a[3] for a in admitted) >= wait_s / 2, answers  # delayed, not refused
        for status, headers, body, _ in refused:
            assert status == 503 and body["error"] == "unavailable", (status, body)
            assert body["message"] == "too many new streams; retry shortly", body
            assert int(headers["Retry-After"]) >= 1, headers
        # the bucket refills: a refused shop gets in shortly after
        refused_shop = next(
            shop for (_, shop), a in zip(merchants, answers, strict=True) if a[0] == 503
        )
        await poll(
            lambda: try_open(session, refused_shop),
            lambda a: a[0] == 200,
            5,
            0.25,
            "refused shop admitted after refill",
        )


# -- a stream that cannot drain ----------------------------------------------------


def _messages_received(gw: Any) -> float:
    with urllib.request.urlopen(gw.url("/metrics"), timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_redis_messages_total"))


def test_shutdown_cuts_a_stream_that_cannot_drain(
    redis_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """A client that stopped reading must not hold the process past shutdown_timeout."""
    import redis

    # the stalled stream queues everything (never cut as slow): only the drain can end it
    sse = {"max_queue": 100_000, "max_queue_bytes": 64 << 20}
    gw = gateway_factory.start(config={"server": {"shutdown_timeout": 3}, "sse": sse})
    merchant_id, shop = merchant
    stuck = stalled_stream(gw, shop)
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


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (/proc's SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_while_starting_exits_0_without_waiting_for_sigkill(gateway_factory: Any) -> None:
    """A container's PID 1 ignores SIGTERM until it installs a handler (the kernel
    drops signals PID 1 does not catch): a pod stopped right after it started then
    waited out its whole grace period. The gateway catches SIGTERM before it loads
    its config, so a stop while starting ends it at once, with 0."""
    gw = gateway_factory.start(wait=False)
    assert gw.pid is not None
    wait_until(lambda: _catches_sigterm(gw.pid), timeout=20, interval=0.002,
               message="(a SIGTERM handler)")
    assert "listening on" not in gw.log_text()  # caught while still starting
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
