"""PublishGate in-process: the queue bound, backpressure on a measured backlog, and the
round-trip fallback where the backlog cannot be measured."""

from __future__ import annotations

import asyncio

import pytest

from gateway.durable import gate as gate_module
from gateway.durable.gate import BACKLOG_LIMIT, QUEUE, Busy, PublishGate
from gateway.metrics import Metrics

MiB = 1024 * 1024


async def test_the_queue_is_bounded() -> None:
    async def backlog() -> int:
        return 0

    async def flush() -> float:
        return 0.0

    gate = PublishGate(backlog, flush, Metrics())
    held = [gate.admit() for _ in range(QUEUE)]
    for place in held:
        await place.__aenter__()
    with pytest.raises(Busy, match="queue full"):
        async with gate.admit():
            pass
    await held[0].__aexit__(None, None, None)
    async with gate.admit():
        pass


async def test_a_backlog_holds_publishing_back_until_it_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate_module, "WAIT_S", 0.3)
    level = [BACKLOG_LIMIT + 1]

    async def backlog() -> int:
        return level[0]

    async def flush() -> float:
        raise AssertionError("the backlog is measured: no round trip needed")

    metrics = Metrics()
    gate = PublishGate(backlog, flush, metrics)
    with pytest.raises(Busy, match="backlog"):
        async with gate.turn(1000, 1):
            raise AssertionError("published over the backlog limit")
    assert metrics.publish_paused == 1
    asyncio.get_running_loop().call_later(0.1, level.__setitem__, 0, 0)
    async with gate.turn(1000, 1):
        pass  # went ahead once the backlog drained
    assert metrics.publish_paused == 2


async def test_without_a_measure_a_round_trip_confirms_every_few_mib() -> None:
    flushes = []

    async def backlog() -> None:
        return None

    async def flush() -> float:
        flushes.append(1)
        return 0.0

    gate = PublishGate(backlog, flush, Metrics())
    for _ in range(10):
        async with gate.turn(MiB, 1000):
            pass
    assert 2 <= len(flushes) <= 3, flushes  # ~10 MiB published, one per 4 MiB


async def test_two_turns_confirming_at_once_confirm_the_same_bytes_once() -> None:
    """Without a backlog measure, both turns past the limit run a round trip at once.
    Each used to subtract what was unconfirmed when it began, so the count went to
    -4 MiB and 8 MiB went out before the next round trip: Redis's default soft limit
    for a pub/sub client's backlog, which this gate exists to stay under."""
    flushes = []
    both_waiting = asyncio.Event()

    async def backlog() -> None:
        return None

    async def flush() -> float:
        flushes.append(1)
        if len(flushes) == 2:
            both_waiting.set()
        await asyncio.wait_for(both_waiting.wait(), 2)
        return 0.0

    gate = PublishGate(backlog, flush, Metrics())
    for _ in range(4):  # 4 MiB published: the next turn confirms first
        async with gate.turn(MiB, 1):
            pass

    async def turn() -> None:
        async with gate.turn(MiB, 1):
            pass

    await asyncio.gather(turn(), turn())
    assert len(flushes) == 2
    published_since = 0
    while len(flushes) == 2:  # publish until the gate asks for the next round trip
        async with gate.turn(MiB // 4, 1):
            published_since += MiB // 4
        assert published_since <= BACKLOG_LIMIT, "published past the limit unconfirmed"


async def test_a_round_trip_that_fails_refuses_the_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate_module, "WAIT_S", 0.2)

    async def backlog() -> None:
        return None

    async def flush() -> float:
        await asyncio.sleep(10)
        return 0.0

    gate = PublishGate(backlog, flush, Metrics())
    async with gate.turn(BACKLOG_LIMIT, 1):
        pass
    with pytest.raises(Busy, match="caught up"):
        async with gate.turn(1, 1):
            pass
