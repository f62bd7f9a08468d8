"""gateway.runtime.deadlines: deadlines that a congested event loop does not use up (pure unit)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.runtime import deadlines


@pytest.fixture(autouse=True)
async def lag_tracked():
    """The gateway runs `track_lag` for the whole process; so do these tests."""
    task = asyncio.ensure_future(deadlines.track_lag())
    await asyncio.sleep(0)
    yield
    task.cancel()


async def test_work_that_never_answers_is_late_soon_after_its_deadline() -> None:
    work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(deadlines.Late):
        await deadlines.wait(work, 0.1)
    assert time.monotonic() - started < 0.1 + 4 * deadlines.TICK_S
    assert work.cancelled()


def _answer_late_behind_a_blocked_loop(block_s: float) -> asyncio.Future[str]:
    """A reply that arrives at 20 ms but, like a socket read feeding a reader task,
    takes a few loop turns to resolve the future, while the loop is blocked for
    `block_s` (a storm's long iteration) from 10 ms on."""
    loop = asyncio.get_running_loop()
    work: asyncio.Future[str] = loop.create_future()

    def hop(n: int) -> None:
        if n == 0:
            work.set_result("reply")
        else:
            loop.call_soon(hop, n - 1)

    loop.call_later(0.01, time.sleep, block_s)
    loop.call_later(0.02, hop, 3)
    return work


async def test_a_plain_timeout_blames_the_dependency_for_the_loops_delay() -> None:
    work = _answer_late_behind_a_blocked_loop(0.4)
    done, _ = await asyncio.wait({work}, timeout=0.2)
    assert not done  # the reply was there in time; the deadline ran first
    await work


async def test_a_congested_loop_does_not_use_up_the_deadline() -> None:
    work = _answer_late_behind_a_blocked_loop(0.4)
    assert await deadlines.wait(work, 0.2) == "reply"


async def test_the_cap_bounds_a_wait_on_a_loop_that_never_catches_up() -> None:
    loop = asyncio.get_running_loop()
    work: asyncio.Future[None] = loop.create_future()
    blocking = True

    def congest() -> None:  # every turn of the loop takes 120 ms
        time.sleep(0.12)
        if blocking:
            loop.call_soon(congest)

    loop.call_soon(congest)
    started = time.monotonic()
    try:
        with pytest.raises(deadlines.Late):
            await deadlines.wait(work, 0.1, cap=0.5)
    finally:
        blocking = False
    assert 0.5 <= time.monotonic() - started < 0.5 + 0.5


async def test_a_cancelled_caller_cancels_the_work() -> None:
    work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(deadlines.wait(work, 10))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert work.cancelled()
