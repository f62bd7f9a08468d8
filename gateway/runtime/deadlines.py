"""Deadlines that time lost by a congested event loop does not use up.

A reconnect storm can keep this process's loop busy for seconds at a time. A
reply that reached the socket in time is then read late, and a plain timeout
would blame Redis or PostgreSQL: the canary would "detect" a frozen Redis, cut
the subscriber link and send every stream `resync`, and lookups would answer
503, each making the storm worse.

`track_lag` (one background loop per process) sums how late the loop runs: a
tick every `TICK_S` adds what it overslept. `wait` counts only the time the
loop was on time against a deadline, so a dependency that is really stuck still
times out after its seconds (plus one tick) on an idle loop, and after a while
longer on a busy one, never past `cap`.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["Late", "track_lag", "wait"]

T = TypeVar("T")

TICK_S = 0.05
_lost = 0.0  # seconds the loop ran late, summed since start (one loop per process)


class Late(TimeoutError):
    """The deadline passed in on-time loop seconds (not `work`'s own TimeoutError)."""


async def track_lag() -> None:
    """Sum the loop's lateness forever (run it supervised, once per process)."""
    global _lost
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(TICK_S)
        _lost += max(0.0, loop.time() - started - TICK_S)


async def wait(work: asyncio.Future[T], seconds: float, *, cap: float | None = None) -> T:
    """The result of `work` (a task or future), given `seconds` of on-time loop.

    On the deadline (`Late`), or when the caller is cancelled, `work` is
    cancelled. `cap` (default 4 x `seconds`) bounds the wait in wall seconds.
    """
    loop = asyncio.get_running_loop()
    started, lost_before = loop.time(), _lost
    give_up = started + (cap if cap is not None else 4 * seconds)
    left = seconds
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=left)
            if done:
                break
            # one more tick: a lateness not yet counted, or a reply queued behind
            # this deadline in the same turn of the loop, shows up meanwhile
            done, _ = await asyncio.wait({work}, timeout=TICK_S)
            if done:
                break
            now = loop.time()
            on_time = now - started - (_lost - lost_before)
            if on_time >= seconds or now >= give_up:
                raise Late
            left = max(seconds - on_time, TICK_S)
    except BaseException:
        work.cancel()
        raise
    return work.result()
