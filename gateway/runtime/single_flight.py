"""One run shared by every caller that arrives while the previous run is in flight.

A caller needs work that *starts after its call* (a history read that sees what
was published before it, a canary round trip behind every earlier message), but
a storm of callers must not cost one run each. `SingleFlight` gives each key at
most one run in flight plus one gathering callers: arrivals join the gathering
run, which starts when the one in flight ends (or on the next loop turn). Used
for replay's history reads (per merchant) and the canary's flushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self, run: Callable[[K], Awaitable[T]]) -> None:
        self._run = run
        self._gathering: dict[K, asyncio.Task[T]] = {}
        self._in_flight: dict[K, asyncio.Task[T]] = {}

    async def __call__(self, key: K) -> T:
        """The result of a run of `key` that starts after this call."""
        task = self._gathering.get(key)
        if task is None:
            task = asyncio.ensure_future(self._start(key, self._in_flight.get(key)))
            task.add_done_callback(_retrieve)
            self._gathering[key] = task
        return await asyncio.shield(task)  # a caller leaving does not cancel the others' run

    def in_flight(self, key: K) -> asyncio.Task[T] | None:
        """The run of `key` under way, if any (not the one still gathering callers)."""
        return self._in_flight.get(key)

    def tasks(self) -> list[asyncio.Task[T]]:
        """Every run gathering or under way (to stop them on shutdown)."""
        return [*self._gathering.values(), *self._in_flight.values()]

    async def _start(self, key: K, previous: asyncio.Task[T] | None) -> T:
        if previous is not None:
            await asyncio.wait({previous})  # callers arriving meanwhile join this run
        else:
            await asyncio.sleep(0)  # callers of this loop turn join it
        me = self._gathering.pop(key)
        self._in_flight[key] = me
        try:
            return await self._run(key)
        finally:
            if self._in_flight.get(key) is me:
                del self._in_flight[key]


def _retrieve(task: asyncio.Task[T]) -> None:
    if not task.cancelled():
        task.exception()  # a run nobody waits for any more is not an error to print
