"""End to end: progress-aware backpressure, slow-client cut, bounded memory.

A lagging client is a raw socket with a 4 KiB receive buffer that stops reading
after the first frame (`delivery_support.LaggingClient`). Before the gateway
queues anything, the kernel buffers on both sides must fill: `buffer_events()`
is a generous upper bound of how many 10 KiB frames they can absorb.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from delivery_support import (
    CountingClient,
    LaggingClient,
    PeakRss,
    Publisher,
    metric_value,
    padded,
    rss_bytes,
)
from ops_support import get_metrics, metric, poll
from support import Event, wait_for, wait_until

pytestmark = pytest.mark.timeout(60)

SIZE = 10 * 1024  # payload bytes
MiB = 1024 * 1024
# these tests are about the bound in events: the byte budget (sse.max_queue_bytes) is
# set out of the way here and tested on its own in test_hardening_e2e.py
EVENT_BOUND_ONLY = {"max_queue_bytes": 1 << 30}


def _seq(event: Event) -> int:
    """The sequence number that ends a plain event's id (`<epoch>-<seq>`)."""
    assert event.id is not None, event
    return int(event.id.rpartition("-")[2])


def buffer_events() -> int:
    """10 KiB frames the kernel can hold for one stalled loopback connection (upper bound)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as fh:
        wmem_max = int(fh.read().split()[2])
    return (2 * wmem_max + 2 * MiB) // SIZE


def lagging(gw: Any, shop: str) -> LaggingClient:
    target = gw.stream_url(shop)[len(gw.base_url) :]
    return LaggingClient("127.0.0.1", gw.port, target)


async def publish_in_step(
    pub: Publisher, fast: CountingClient, items: list[tuple[str, str]], batch: int = 200
) -> None:
    """Pipeline `items` in batches; before each batch wait until the fast client has
    everything but the last batch (keeps Redis' pubsub output buffer small)."""
    sent = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        receivers = await pub.send_many(chunk)
        assert all(r == 1 for r in receivers), "the gateway must be subscribed"
        sent += len(chunk)
        target = sent - batch
        await wait_for(lambda t=target: len(fast.seen) >= t or fast.closed, timeout=20)
        assert not fast.closed, "the fast client was cut"


async def test_coalescing_keeps_newest_progress_per_job_and_every_completion(
    gateway_factory: Any, merchant: Any, redis_server: Any
):
    filler = buffer_events()
    gw = gateway_factory.start(config={"sse": {**EVENT_BOUND_ONLY, "max_queue": filler + 1000}})
    mid, shop = merchant
    slow = await lagging(gw, shop).connect()
    fast = await CountingClient(gw.stream_url(shop)).start()
    try:
        assert slow.status == 200
        items: list[tuple[str, str]] = []
        n = 0

        def add(event: str, **fields: Any) -> None:
            nonlocal n
            n += 1
            items.append((event, padded(n, SIZE if event == "stage" else 200, **fields)))

        for _ in range(filler):  # fills the kernel buffers: the gateway queues after this
            add("stage")
        finals = {"A": ("completion", 30), "B": ("error", 30), "C": ("completion", 10)}
        for pct in range(1, 31):
            for job, (final, last) in finals.items():
                if pct <= last:
                    add("progress", jobId=job, pct=pct)
                if pct == last:
                    add(final, jobId=job)
            if pct == 5:
                add("stage", jobId="A")  # a non-coalesced event in the middle
        add("progress", pct=0)  # no job key: never coalesced
        add("progress", pct=0)
        add("stage", end=True)
        published = {e: sum(1 for k, _ in items if k == e) for e in ("progress", "completion")}
        coalesced_before = await metric_value(gw.url("/metrics"), "gateway_events_coalesced_total")

        async with Publisher(redis_server.url, mid) as pub:
            await publish_in_step(pub, fast, items)
        await wait_for(lambda: fast.seen and fast.seen[-1] == n, timeout=20)

        await slow.read_rest(30, until=b'"end": true')
        assert slow.ended is None, "the lagging client was cut"
        events = slow.events()
        assert events[0].event == "connected"
        got = events[1:]
        seqs = [_seq(e) for e in got]
        assert seqs == sorted(set(seqs)), "ids must keep increasing"
        ns = [e.json()["n"] for e in got]
        assert ns == sorted(ns), "publication order must be kept"

        stage_ns = [e.json()["n"] for e in got if e.event == "stage"]
        assert stage_ns == [i + 1 for i, (k, _) in enumerate(items) if k == "stage"]
        for job, (final, last) in finals.items():
            progress = [
                e.json()["pct"]
                for e in got
                if e.event == "progress" and e.json().get("jobId") == job
            ]
            ends = [e for e in got if e.event == final and e.json().get("jobId") == job]
            assert len(ends) == 1, f"job {job}: {final} must arrive exactly once"
            assert progress and progress[-1] == last, f"job {job}: newest progress lost"
            assert progress == sorted(progress)
            assert len(progress) < last, f"job {job}: nothing was coalesced: {progress}"
        keyless = [e for e in got if e.event == "progress" and "jobId" not in e.json()]
        assert len(keyless) == 2
        received_progress = sum(1 for e in got if e.event == "progress")
        print(
            f"\nlagging client: {published['progress']} progress published, "
            f"{received_progress} received; completions {published['completion']}"
        )
        coalesced = await metric_value(gw.url("/metrics"), "gateway_events_coalesced_total")
        assert coalesced - coalesced_before >= published["progress"] - received_progress
    finally:
        await slow.close()
        await fast.close()


async def test_slow_client_cut_while_fast_client_keeps_receiving(
    gateway_factory: Any, merchant: Any, redis_server: Any
):
    max_queue = 50
    gw = gateway_factory.start(config={"sse": {**EVENT_BOUND_ONLY, "max_queue": max_queue}})
    mid, shop = merchant
    before = await metric_value(gw.url("/metrics"), "gateway_slow_client_disconnects_total")
    assert before == 0
    slow = await lagging(gw, shop).connect()
    fast = await CountingClient(gw.stream_url(shop)).start()
    try:
        total = buffer_events() + max_queue + 200
        items = [("stage", padded(i, SIZE)) for i in range(1, total + 1)]
        async with Publisher(redis_server.url, mid) as pub:
            await publish_in_step(pub, fast, items)
            await wait_for(lambda: len(fast.seen) >= total, timeout=20)
            assert fast.seen == list(range(1, total + 1))
            await slow.read_rest(20)
            assert slow.ended in ("eof", "reset")
            received = [e for e in slow.events() if e.event == "stage"]
            assert len(received) < total
            await wait_for(lambda: "slow client cut" in gw.log_text(), timeout=5)
            after = await metric_value(gw.url("/metrics"), "gateway_slow_client_disconnects_total")
            assert after == 1
            # the fast client is still live
            await pub.send("stage", padded(total + 1, 100))
            await wait_for(lambda: fast.seen[-1] == total + 1, timeout=5)
            assert not fast.closed
    finally:
        await slow.close()
        await fast.close()


async def test_memory_bounded_with_one_stalled_client(
    gateway_factory: Any, merchant: Any, redis_server: Any
):
    """10,000 x 10 KiB events while one client stops reading.

    Bound: the stalled client's queue holds at most max_queue (1000) entries; each
    entry keeps payload + plain frame + chunked frame (~3 x 10 KiB), i.e. ~30 MiB,
    plus transport and batch buffers (< 2 MiB), the history ring (100 x 30 KiB)
    and allocator slack. An unbounded queue would grow by ~300 MiB.
    """
    max_queue, total, bound = 1000, 10_000, 64 * MiB
    sse = {**EVENT_BOUND_ONLY, "max_queue": max_queue, "history": 100}
    gw = gateway_factory.start(config={"sse": sse})
    mid, shop = merchant
    fast = await CountingClient(gw.stream_url(shop)).start()
    slow: LaggingClient | None = None
    rss = PeakRss(gw.pid)

    try:
        async with Publisher(redis_server.url, mid) as pub:
            warmup = 200  # fills history and warms allocator arenas
            await publish_in_step(
                pub, fast, [("stage", padded(10**6 + i, SIZE)) for i in range(1, warmup + 1)]
            )
            await wait_for(lambda: len(fast.seen) >= warmup, timeout=10)
            fast.seen.clear()
            slow = await lagging(gw, shop).connect()
            baseline = rss_bytes(gw.pid)
            rss.start()
            started = time.monotonic()
            items = [("stage", padded(i, SIZE)) for i in range(1, total + 1)]
            await publish_in_step(pub, fast, items, batch=250)
            await wait_for(lambda: len(fast.seen) >= total, timeout=30)
            elapsed = time.monotonic() - started
            peak = await rss.stop()
        peak = max(peak, rss_bytes(gw.pid))
        growth = peak - baseline
        print(
            f"\nRSS baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
            f"growth {growth / MiB:.1f} MiB (bound {bound / MiB:.0f} MiB); "
            f"{total} x 10 KiB to the fast client in {elapsed:.1f}s"
        )
        assert fast.seen == list(range(1, total + 1))
        assert not fast.closed
        assert growth < bound
        await slow.read_rest(20)
        assert slow.ended in ("eof", "reset"), "the stalled client must be cut"
        await wait_for(lambda: "slow client cut" in gw.log_text(), timeout=5)
        assert await metric_value(gw.url("/metrics"), "gateway_slow_client_disconnects_total") == 1
    finally:
        rss.sampling = False
        if slow is not None:
            await slow.close()
        await fast.close()


async def test_slow_client_close_line_names_slow_client(
    gateway_factory: Any, merchant: Any, redis_server: Any
):
    """Every cut stream's close line says reason=slow_client (4 lagging clients).

    Regression: transport.abort() makes aiohttp cancel the handler; the close line
    must still carry the stream's own reason, not the default client_gone.
    """
    gw = gateway_factory.start(config={"sse": {**EVENT_BOUND_ONLY, "max_queue": 5}})
    mid, shop = merchant
    slows = [await lagging(gw, shop).connect() for _ in range(4)]
    fast = await CountingClient(gw.stream_url(shop)).start()
    try:
        total = buffer_events() + 50
        async with Publisher(redis_server.url, mid) as pub:
            await publish_in_step(pub, fast, [("stage", padded(i, SIZE)) for i in range(total)])
        for slow in slows:
            await slow.read_rest(20)
            assert slow.ended in ("eof", "reset")
        await wait_for(lambda: gw.log_text().count("slow client cut") == 4, timeout=5)

        def close_lines() -> list[str]:
            return [
                line
                for line in gw.log_text().splitlines()
                if "stream close" in line and f"shop={shop}" in line
            ]

        await wait_for(lambda: len(close_lines()) >= 4, timeout=5)
        assert all("reason=slow_client" in line for line in close_lines()), close_lines()
    finally:
        for slow in slows:
            await slow.close()
        await fast.close()


# -- sse.max_queue_bytes: a stalled client and memory ------------------------------


def _target(gw: Any, shop: str, **query: str) -> str:
    return gw.stream_url(shop, **query)[len(gw.base_url) :]


def _slow_cuts(samples: dict[str, float]) -> float:
    """Slow-client cuts, from either metric the README may name."""
    total = samples.get("gateway_slow_client_disconnects_total", 0.0)
    return max(total, samples.get('gateway_stream_closes_total{reason="slow_client"}', 0.0))


@pytest.mark.timeout(90)
async def test_byte_budget_cuts_a_stalled_client_and_memory_comes_back(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    """600 events of 256 KiB with one stream that never reads: it is cut, RSS stays bounded
    and comes back. Batches are paced on gateway_redis_messages_total (Redis must not
    drop the gateway's subscriber for an output buffer over its 32 MiB pubsub limit)."""
    size, total, batch = 256 * 1024, 600, 50
    gw = gateway_factory.start(config={"sse": {"max_queue_bytes": 262144, "history": 10}})
    mid, shop = merchant
    stalled = await LaggingClient("127.0.0.1", gw.port, _target(gw, shop)).connect()
    rss = PeakRss(gw.pid)

    try:
        assert stalled.status == 200
        before = await get_metrics(gw)
        cuts_before = _slow_cuts(before)
        messages_before = metric(before, "gateway_redis_messages_total")
        baseline = rss_bytes(gw.pid)
        rss.start()
        started = time.monotonic()
        async with Publisher(redis_server.url, mid) as pub:
            for first in range(1, total + 1, batch):
                items = [("stage", padded(n, size)) for n in range(first, first + batch)]
                receivers = await pub.send_many(items)
                assert all(r == 1 for r in receivers), "the gateway must be subscribed"
                want = messages_before + first + batch - 1

                def read_all(m: dict[str, float], want: float = want) -> bool:
                    return metric(m, "gateway_redis_messages_total") >= want

                await poll(lambda: get_metrics(gw), read_all, 20,
                           what=f"the gateway read {first + batch - 1} events")
        peak = await rss.stop()
        burst_s = time.monotonic() - started
        after = await get_metrics(gw)
        assert metric(after, "gateway_redis_reconnects_total") == 0
        await poll(lambda: get_metrics(gw), lambda m: _slow_cuts(m) > cuts_before, 10,
                   what="the stalled client cut as a slow client")
        growth = peak - baseline
        # README.md "Memory per stream": the stalled client holds at most its queue's byte
        # budget plus the transport's 64 KiB write buffer. Besides it: sse.history frames,
        # at most one publish batch read from Redis and not yet dropped (a gateway behind
        # on a busy machine), and slack for the allocator and the interpreter.
        # Measured: +4.4 to +5 MiB in 8 runs; the burst itself is 150 MiB.
        stalled_client = 262144 + 64 * 1024
        history = 10 * size
        in_flight = batch * size
        slack = 8 * MiB
        bound = stalled_client + history + in_flight + slack  # ~23.3 MiB
        print(f"\nburst {burst_s:.1f} s; RSS before {baseline / MiB:.0f} MiB, "
              f"peak +{growth / MiB:.1f} MiB (bound {bound / MiB:.1f} MiB)")
        assert growth < bound, f"RSS grew {growth / MiB:.1f} MiB during the burst"
        settled = history + slack  # what may stay: the history, not the cut client's queue
        settled_at = time.monotonic()
        wait_until(lambda: rss_bytes(gw.pid) - baseline < settled, timeout=30,
                   message=f"RSS back within {settled / MiB:.1f} MiB of {baseline / MiB:.0f} MiB")
        print(f"RSS settled after {time.monotonic() - settled_at:.1f} s: "
              f"{rss_bytes(gw.pid) / MiB:.0f} MiB")
    finally:
        rss.sampling = False
        await stalled.close()
