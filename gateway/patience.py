"""Deadlines that time spent by a congested event loop does not use up.

A reconnect storm can keep this process's loop busy for seconds at a time. A
reply that reached the socket in time is then read late, and a plain timeout
would blame Redis or PostgreSQL: the canary would "detect" a frozen Redis, cut
the subscriber link and send every stream `resync`, and lookups would answer
503, each making the storm worse. `wait` gives the work its `seconds`, then
keeps waiting only while the loop itself is shown to be behind (a short probe
sleep oversleeps), up to `cap` seconds in all. A dependency that is really
stuck still times out, `PROBE_S` after its `seconds` when the loop is idle.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["Late", "wait"]

T = TypeVar("T")

PROBE_S = 0.05


class Late(TimeoutError):
    """The deadline passed while the loop was keeping up (not `work`'s own TimeoutError)."""


async def wait(work: asyncio.Future[T], seconds: float, *, cap: float | None = None) -> T:
    """The result of `work` (a task or future); on a deadline (`Late`), or when the
    caller is cancelled, `work` is cancelled. `cap` (default 4 x `seconds`) bounds
    the whole wait."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + (cap if cap is not None else 4 * seconds)
    try:
        done, _ = await asyncio.wait({work}, timeout=seconds)
        while not done:
            probe_started = loop.time()
            done, _ = await asyncio.wait({work}, timeout=PROBE_S)
            now = loop.time()
            if not done and (now - probe_started < 2 * PROBE_S or now >= give_up):
                raise Late  # the loop keeps up (or the cap is reached): really late
    except BaseException:
        work.cancel()
        raise
    return work.result()
