"""Single flight: one run of a keyed operation shared by the callers that need it at once.

A storm of callers must not cost one run each. `SingleFlight(run)` keeps at most
one run of `run(key)` in flight per key, and offers two ways to share it:

- `join(key)`: the run under way, or one started now. For reads whose answer
  may predate the call: a merchant lookup, a history's newest id.
- `await flights(key)`: a run that *starts after the call*, for callers that
  need to see everything before it (a history read that sees what was
  published before it, a canary round trip behind every earlier message).
  Arrivals join the run gathering callers, which starts when the one in flight
  ends (or on the next loop turn).

Either way a caller that leaves (cancelled, or past its own deadline) does not
cancel the run the others wait for.
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

    async def join(self, key: K) -> T:
        """The result of the run of `key` under way, or of one started now."""
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(key))
            task.add_done_callback(_retrieve)
            task.add_done_callback(lambda done: self._forget(key, done))
            self._in_flight[key] = task
        return await asyncio.shield(task)

    def in_flight(self, key: K) -> asyncio.Task[T] | None:
        """The run of `key` under way, if any (not the one still gathering callers)."""
        return self._in_flight.get(key)

    def busy(self, key: K) -> bool:
        """Whether a run of `key` is under way or gathering callers."""
        return key in self._in_flight or key in self._gathering

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
            self._forget(key, me)

    def _forget(self, key: K, task: asyncio.Task[T]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]


def _retrieve(task: asyncio.Task[T]) -> None:
    if not task.cancelled():
        task.exception()  # a run nobody waits for any more is not an error to print
