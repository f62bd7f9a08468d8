"""Faults end to end: Redis killed/restarted and frozen/thawed, PostgreSQL stopped,
merchant revocation (README.md "Faults", "Health and metrics").

Each test prints what it measured (detection and recovery times).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from ops_support import Timeline, get_health, get_metrics, metric, poll
from support import http_json, open_stream, publish, unique_merchant, wait_until

HEARTBEAT = 0.3


def _channel(merchant_id: str, event: str = "progress") -> str:
    return f"merchant:{merchant_id}:{event}"


async def _connected(stream: Any) -> None:
    assert stream.status == 200, stream.status
    ev = await stream.next_event(timeout=10)
    assert ev.event == "connected", ev


async def _open_connected(stack: contextlib.AsyncExitStack, gw: Any, *shops: str) -> list[Any]:
    """A stream per shop named (twice: two streams), each past its `connected` frame."""
    streams = [await stack.enter_async_context(open_stream(gw.stream_url(shop)))
               for shop in shops]
    for s in streams:
        await _connected(s)
    return streams


async def _assert_unavailable(url: str) -> dict[str, Any]:
    status, headers, body = await http_json(url)
    assert status == 503, (status, body)
    assert body["error"] == "unavailable", body
    assert int(headers["Retry-After"]) >= 1, headers
    return body


def _health_is(status: int) -> Any:
    return lambda r: r[0] == status


def _assert_failing(body: dict[str, Any], *failing: str) -> None:
    """/health says fail, and which checks fail: `failing`, the others ok."""
    assert body["status"] == "fail", body
    for check in ("redis", "delivery", "postgres"):
        assert body[check]["status"] == ("fail" if check in failing else "ok"), body


async def _deliver_everywhere(redis_url: str, targets: dict[str, list[Any]], tag: str) -> None:
    """Publish one progress event per merchant; every stream of it must get it."""
    for merchant_id, streams in targets.items():
        payload = {"jobId": f"{tag}-{merchant_id}", "step": tag}
        receivers = await publish(redis_url, _channel(merchant_id), payload)
        assert receivers >= 1, f"nobody subscribed to {_channel(merchant_id)}"
        for s in streams:
            ev = await s.next_event_of("progress", timeout=5)
            assert ev.json() == payload, ev


async def _pings_continue(streams: list[Any], count: int) -> None:
    """Every stream receives `count` more `: ping` comments and stays open."""
    for _ in range(count):
        await asyncio.gather(*(s.wait_comment(" ping", timeout=HEARTBEAT * 6) for s in streams))
    assert not any(s.closed for s in streams)


# ---------------------------------------------------------------------------
# Redis killed and restarted on the same port
# ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_redis_killed_and_restarted(redis_factory, postgres_server, gateway_factory):
    r = redis_factory()
    (a_id, a_shop), (b_id, b_shop) = unique_merchant("rk"), unique_merchant("rk")
    postgres_server.add_merchant(a_id, a_shop)
    postgres_server.add_merchant(b_id, b_shop)
    gw = await gateway_factory.astart(config={"sse": {"heartbeat": HEARTBEAT}}, redis=r)
    tl = Timeline("Redis SIGKILL -> restart on the same port")

    async with contextlib.AsyncExitStack() as stack:
        streams = await _open_connected(stack, gw, a_shop, a_shop, b_shop)
        a1, a2, b1 = streams
        await poll(lambda: get_health(gw), _health_is(200), 10, what="/health 200 before")
        await _deliver_everywhere(r.url, {a_id: [a1, a2], b_id: [b1]}, "before")
        reconnects_before = metric(await get_metrics(gw), "gateway_redis_reconnects_total")

        # -- outage ------------------------------------------------------------
        killed = time.monotonic()
        r.kill()
        (status, body, _), seen = await poll(
            lambda: get_health(gw), _health_is(503), 10, 0.02, "/health 503 after kill"
        )
        tl.add("detection: kill -> /health 503", seen - killed)
        _assert_failing(body, "redis", "delivery")
        status, body, _ = await get_health(gw, "/health/ready")  # no Redis: not ready
        assert status == 503 and body["redis"]["status"] == "fail", body

        # open streams stay open and keep their heartbeats
        await _pings_continue(streams, 3)
        # new streams are refused with 503 + Retry-After (cached and uncached shop)
        await _assert_unavailable(gw.stream_url(a_shop))
        c_id, c_shop = unique_merchant("rk")
        postgres_server.add_merchant(c_id, c_shop)
        await _assert_unavailable(gw.stream_url(c_shop))
        # still failing a little later (the supervisor backs off; nothing flaps green)
        await _pings_continue(streams, 2)
        status, body, _ = await get_health(gw)
        assert status == 503 and body["delivery"]["status"] == "fail", body
        tl.add("outage length", time.monotonic() - killed)

        # -- recovery ----------------------------------------------------------
        restarted = time.monotonic()
        await asyncio.to_thread(r.restart)
        tl.add("redis-server restart itself", time.monotonic() - restarted)
        for name, s in zip(("a1", "a2", "b1"), streams, strict=True):
            ev = await s.next_event_of("resync", timeout=15)
            assert ev.json() == {"reason": "redis_reconnected"}, ev
            tl.add(f"recovery: restart -> resync on {name}", time.monotonic() - restarted)
        _, healthy = await poll(lambda: get_health(gw), _health_is(200), 10, 0.05, "/health 200")
        tl.add("recovery: restart -> /health 200", healthy - restarted)

        await _deliver_everywhere(r.url, {a_id: [a1, a2], b_id: [b1]}, "after")
        # a new stream works again
        async with open_stream(gw.stream_url(c_shop)) as c1:
            await _connected(c1)
            await _deliver_everywhere(r.url, {c_id: [c1]}, "new")
        m = await get_metrics(gw)
        assert metric(m, "gateway_redis_reconnects_total") >= reconnects_before + 1, m
        assert metric(m, "gateway_refusals_total", code="unavailable") >= 2, m
    tl.print()


BACKOFF_CAP_S = 5.0  # README "Faults": reconnect backoff capped at 5 s


@pytest.mark.timeout(60)
async def test_redis_long_outage_backoff_is_capped(redis_factory, postgres_server, gateway_factory):
    r = redis_factory()
    a_id, a_shop = unique_merchant("rl")
    postgres_server.add_merchant(a_id, a_shop)
    gw = await gateway_factory.astart(config={"sse": {"heartbeat": HEARTBEAT}}, redis=r)
    tl = Timeline("Redis SIGKILL, 10 s outage (backoff reaches its cap) -> restart")

    async with open_stream(gw.stream_url(a_shop)) as a1:
        await _connected(a1)
        await poll(lambda: get_health(gw), _health_is(200), 10, what="/health 200 before")
        reconnects_before = metric(await get_metrics(gw), "gateway_redis_reconnects_total")
        killed = time.monotonic()
        r.kill()
        # the outage itself (not a synchronisation): heartbeats and 503 all along
        while time.monotonic() - killed < 2 * BACKOFF_CAP_S:
            await _pings_continue([a1], 1)
            status, body, _ = await get_health(gw)
            assert status == 503 and body["redis"]["status"] == "fail", body
        tl.add("outage length", time.monotonic() - killed)
        restarted = time.monotonic()
        await asyncio.to_thread(r.restart)
        ev = await a1.next_event_of("resync", timeout=3 * BACKOFF_CAP_S)
        assert ev.json() == {"reason": "redis_reconnected"}, ev
        recovery = tl.add("recovery: restart -> resync", time.monotonic() - restarted)
        await _deliver_everywhere(r.url, {a_id: [a1]}, "after")
        m = await get_metrics(gw)
        # one outage, one reconnect (no flapping)
        assert metric(m, "gateway_redis_reconnects_total") == reconnects_before + 1, m
    tl.print()
    # the next attempt after restart comes within the capped backoff (+ connect time)
    assert recovery < BACKOFF_CAP_S + 1.5, recovery


# ---------------------------------------------------------------------------
# Redis frozen (SIGSTOP) and thawed (SIGCONT)
# ---------------------------------------------------------------------------


async def _health_while_frozen(gw: Any, frozen: float, checks: int = 3) -> tuple[float, float]:
    """`checks` /health calls while Redis hangs: each 503 and under 2.5 s.

    Returns (when the first 503 was seen, slowest answer). Not support.wait_for:
    every answer is checked as it comes (fast, and never green again after a 503),
    where the poller would take a failed check for "not yet".
    """
    first_503: float | None = None
    slowest = 0.0
    deadline = frozen + 10
    answered = 0
    while answered < checks:
        assert time.monotonic() < deadline, "frozen Redis never reported by /health"
        status, body, elapsed = await get_health(gw)
        slowest = max(slowest, elapsed)
        assert elapsed < 2.5, f"/health took {elapsed:.2f}s while Redis hung: {body}"
        if status == 503:
            assert body["status"] == "fail" and body["delivery"]["status"] == "fail", body
            first_503 = first_503 or time.monotonic()
            answered += 1
        else:
            assert first_503 is None, f"/health went green again while frozen: {body}"
    assert first_503 is not None
    return first_503, slowest


@pytest.mark.timeout(90)
async def test_redis_frozen_and_thawed(redis_factory, postgres_server, gateway_factory):
    r = redis_factory()
    a_id, a_shop = unique_merchant("rf")
    postgres_server.add_merchant(a_id, a_shop)
    gw = await gateway_factory.astart(config={"sse": {"heartbeat": HEARTBEAT}}, redis=r)
    tl = Timeline("Redis SIGSTOP -> SIGCONT")

    async with contextlib.AsyncExitStack() as stack:
        streams = await _open_connected(stack, gw, a_shop, a_shop)
        await poll(lambda: get_health(gw), _health_is(200), 10, what="/health 200 before")
        await _deliver_everywhere(r.url, {a_id: streams}, "before")
        reconnects_before = metric(await get_metrics(gw), "gateway_redis_reconnects_total")

        async def admitted() -> int:
            async with open_stream(gw.stream_url(a_shop)) as probe:
                return probe.status

        frozen = time.monotonic()
        r.freeze()
        try:
            # the gateway's own verdict: new streams refused once the canary cut the link
            (_, cut_at), health = await asyncio.gather(
                poll(admitted, lambda st: st == 503, 10, 0.05, "new streams refused"),
                _health_while_frozen(gw, frozen),
            )
            first_503, slowest = health
            tl.add("detection: freeze -> /health 503", first_503 - frozen)
            tl.add("detection: freeze -> canary cut (new streams 503)", cut_at - frozen)
            tl.add("slowest /health while frozen", slowest)
            assert cut_at - frozen < 5.0
            await _pings_continue(streams, 2)
            await _assert_unavailable(gw.stream_url(a_shop))
            status, body, elapsed = await get_health(gw)
            assert status == 503 and body["delivery"]["status"] == "fail", body
            assert elapsed < 2.5, elapsed
            tl.add("outage length", time.monotonic() - frozen)
        finally:
            thawed = time.monotonic()
            r.thaw()
        for name, s in zip(("a1", "a2"), streams, strict=True):
            ev = await s.next_event_of("resync", timeout=15)
            assert ev.json() == {"reason": "redis_reconnected"}, ev
            tl.add(f"recovery: thaw -> resync on {name}", time.monotonic() - thawed)
        _, healthy = await poll(lambda: get_health(gw), _health_is(200), 10, 0.05, "/health 200")
        tl.add("recovery: thaw -> /health 200", healthy - thawed)
        await _deliver_everywhere(r.url, {a_id: streams}, "after")
        m = await get_metrics(gw)
        assert metric(m, "gateway_redis_reconnects_total") >= reconnects_before + 1, m
    tl.print()


# ---------------------------------------------------------------------------
# PostgreSQL stopped and started again
# ---------------------------------------------------------------------------


async def _stop_pg(pg: Any, gw: Any, tl: Timeline) -> None:
    """Stop PostgreSQL (fast shutdown) and wait for /health to say so."""
    stopped = time.monotonic()
    await asyncio.to_thread(pg.stop)
    tl.add("pg fast shutdown itself", time.monotonic() - stopped)
    (_, body, _), seen = await poll(
        lambda: get_health(gw), _health_is(503), 10, 0.05, "/health 503 after PG stop"
    )
    tl.add("detection: stop -> /health 503", seen - stopped)
    _assert_failing(body, "postgres")


@pytest.mark.timeout(90)
async def test_postgres_stopped(redis_server, postgres_factory, gateway_factory):
    pg = postgres_factory()
    merchants = [unique_merchant("pg") for _ in range(3)]
    (a_id, a_shop), (b_id, b_shop), (c_id, c_shop) = merchants
    for mid, shop in merchants:
        pg.add_merchant(mid, shop)
    cache_ttl = 0.5
    gw = await gateway_factory.astart(
        config={"sse": {"heartbeat": HEARTBEAT}, "postgres": {"cache_ttl": cache_ttl}},
        postgres=pg,
    )
    tl = Timeline("PostgreSQL stopped -> started")

    async with open_stream(gw.stream_url(a_shop)) as a1:
        await _connected(a1)
        # B verified once (cached), then its stream closes; C never asked for (uncached)
        async with open_stream(gw.stream_url(b_shop)) as b0:
            await _connected(b0)
        b_cached_at = time.monotonic()
        await poll(lambda: get_health(gw), _health_is(200), 10, what="/health 200 before")
        await _stop_pg(pg, gw, tl)

        # open streams unaffected: heartbeats and delivery go on
        await _pings_continue([a1], 2)
        await _deliver_everywhere(redis_server.url, {a_id: [a1]}, "during")

        # B's entry is past cache_ttl: only the stale answer can admit it while PG is down;
        # C cannot be verified: 503 + Retry-After. Several attempts, each answered alike.
        await asyncio.sleep(max(0.0, b_cached_at + cache_ttl + 0.1 - time.monotonic()))
        answers = []
        for attempt in range(3):
            async with open_stream(gw.stream_url(b_shop)) as b1:
                answers.append(("cached", b1.status))
                if b1.status == 200:
                    await _connected(b1)
                    await _deliver_everywhere(redis_server.url, {b_id: [b1]}, f"stale{attempt}")
            st, headers, body = await http_json(gw.stream_url(c_shop))
            answers.append(("uncached", st))
            if st == 503:
                assert body["error"] == "unavailable", body
                assert int(headers["Retry-After"]) >= 1, headers
        assert answers == [("cached", 200), ("uncached", 503)] * 3, answers
        status, body, _ = await get_health(gw)
        assert status == 503 and body["postgres"]["status"] == "fail", body
        # readiness stays green: this instance still serves its verified shops
        status, body, _ = await get_health(gw, "/health/ready")
        assert status == 200 and body["postgres"]["status"] == "fail", body

        # PostgreSQL back (stop() dropped its data dir: re-seed the same rows)
        started = time.monotonic()
        await asyncio.to_thread(pg.start)
        tl.add("pg start itself", time.monotonic() - started)
        await asyncio.to_thread(pg.apply_schema)
        for mid, shop in merchants:
            await asyncio.to_thread(pg.add_merchant, mid, shop)

        async def open_c() -> int:
            async with open_stream(gw.stream_url(c_shop)) as c1:
                if c1.status != 200:
                    return c1.status
                await _connected(c1)
                await _deliver_everywhere(redis_server.url, {c_id: [c1]}, "after")
                return 200

        # the uncached shop is admitted again, without restarting the gateway
        _, ok_at = await poll(open_c, lambda s: s == 200, 20, 0.1, "uncached shop after PG start")
        tl.add("recovery: start -> uncached shop admitted", ok_at - started)
        _, healthy = await poll(lambda: get_health(gw), _health_is(200), 10, 0.05, "/health 200")
        tl.add("recovery: start -> /health 200", healthy - started)
        await _deliver_everywhere(redis_server.url, {a_id: [a1]}, "end")
        assert not a1.closed and gw.returncode is None
    log = gw.log_text()
    assert "Internal Server Error" not in log
    assert "Traceback" not in log, log[-3000:]
    # the original symptom had no traceback: aiopg logged this about once a second
    assert "Unclosed connection" not in log, log[log.find("Unclosed connection") - 500 :][:3000]
    assert "exception was never retrieved" not in log, log[-3000:]
    tl.print()


# ---------------------------------------------------------------------------
# Revocation
# ---------------------------------------------------------------------------


async def test_revoked_merchant_streams_end(redis_server, postgres_server, gateway_factory):
    (a_id, a_shop), (b_id, b_shop) = unique_merchant("rv"), unique_merchant("rv")
    postgres_server.add_merchant(a_id, a_shop)
    postgres_server.add_merchant(b_id, b_shop)
    gw = await gateway_factory.astart(config={"postgres": {"recheck": 0.5}})

    async with contextlib.AsyncExitStack() as stack:
        a1, a2, b1 = await _open_connected(stack, gw, a_shop, a_shop, b_shop)
        # a recheck or two pass while the merchant is still active: nothing happens
        await _deliver_everywhere(redis_server.url, {a_id: [a1, a2], b_id: [b1]}, "before")

        revoked_at = time.monotonic()
        postgres_server.set_active(a_shop, False)
        for s in (a1, a2):
            ev = await s.next_event_of("revoked", timeout=5)
            assert ev.json() == {"reason": "revoked"}, ev
            await s.wait_closed(timeout=5)
            assert s.closed
        print(
            f"\nrevocation: set inactive -> streams ended in {time.monotonic() - revoked_at:.3f}s"
        )

        # the other merchant is unaffected
        assert not b1.closed
        await _deliver_everywhere(redis_server.url, {b_id: [b1]}, "after")
        status, _, body = await http_json(gw.stream_url(a_shop))
        assert status == 403 and body["error"] == "unknown_merchant", (status, body)
        assert not b1.closed


async def test_a_shop_moved_to_another_merchant_id_ends_its_old_streams(
    redis_server, postgres_server, gateway_factory
):
    """The recheck compares the merchant id, not only that the shop still has one:
    a shop whose row now names another merchant id must not keep the old id's
    events flowing to its open streams."""
    old_id, shop = unique_merchant("mv")
    new_id = f"{old_id}-new"
    postgres_server.add_merchant(old_id, shop)
    gw = await gateway_factory.astart(config={"postgres": {"recheck": 0.5, "cache_ttl": 0.5}})
    async with contextlib.AsyncExitStack() as stack:
        [stream] = await _open_connected(stack, gw, shop)
        await _deliver_everywhere(redis_server.url, {old_id: [stream]}, "before")
        postgres_server.execute("UPDATE merchants SET id = %s WHERE shop_domain = %s",
                                (new_id, shop))
        assert (await stream.next_event_of("revoked", timeout=5)).json() == {"reason": "revoked"}
        await stream.wait_closed(timeout=5)
        async with open_stream(gw.stream_url(shop)) as moved:
            assert moved.status == 200
            connected = await moved.next_event_of("connected", timeout=10)
            assert connected.json()["merchantId"] == new_id


# -- a Redis error that is not a connection fault ----------------------------------


def test_redis_error_that_is_not_a_fault_is_logged_and_retried(
    redis_factory: Any, gateway_factory: Any
) -> None:
    """SELECT 99 fails with a ResponseError: the supervisor must log it and keep trying."""
    redis_server = redis_factory()
    gw = gateway_factory.start(env={"REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/99"})
    wait_until(lambda: "subscriber connection failed" in gw.log_text(), timeout=10,
               interval=0.1, message="for 'subscriber connection failed' in the gateway log")
    assert gw.live()
    assert gw.returncode is None
