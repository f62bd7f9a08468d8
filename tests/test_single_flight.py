"""gateway.runtime.single_flight: callers share one run per key (pure unit)."""

from __future__ import annotations

import asyncio

from gateway.runtime.single_flight import SingleFlight


async def test_callers_share_runs_that_start_after_them() -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def run(key: str) -> int:
        started.append(key)
        number = len(started)
        await gate.wait()
        return number

    runs: SingleFlight[str, int] = SingleFlight(run)
    first = [asyncio.ensure_future(runs("a")) for _ in range(50)]  # one turn: one run
    await asyncio.sleep(0.01)
    assert started == ["a"] and runs.in_flight("a") is not None
    late = [asyncio.ensure_future(runs("a")) for _ in range(50)]  # during it: the next one
    other = asyncio.ensure_future(runs("b"))  # another key never waits for "a"
    await asyncio.sleep(0.01)
    assert started == ["a", "b"]
    gate.set()
    assert set(await asyncio.gather(*first)) == {1}
    assert set(await asyncio.gather(*late)) == {3}  # began after run 1 ended, not before
    assert await other == 2
    assert started == ["a", "b", "a"] and runs.in_flight("a") is None and not runs.tasks()


async def test_a_caller_leaving_does_not_cancel_the_shared_run() -> None:
    done = asyncio.Event()

    async def run(_: None) -> str:
        await asyncio.sleep(0.01)
        done.set()
        return "ok"

    runs: SingleFlight[None, str] = SingleFlight(run)
    leaving = asyncio.ensure_future(runs(None))
    staying = asyncio.ensure_future(runs(None))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == "ok" and done.is_set()


async def test_join_shares_the_run_under_way_and_a_leaver_does_not_cancel_it() -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def run(key: str) -> int:
        started.append(key)
        await gate.wait()
        return len(started)

    flights: SingleFlight[str, int] = SingleFlight(run)
    joined = [asyncio.ensure_future(flights.join("a")) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert started == ["a"] and flights.in_flight("a") is not None  # one run for all
    joined[0].cancel()  # one caller leaves: the others' run goes on
    late = asyncio.ensure_future(flights.join("a"))  # under way: joined, not a new run
    await asyncio.sleep(0.01)
    gate.set()
    assert set(await asyncio.gather(*joined[1:], late)) == {1}
    assert started == ["a"] and flights.in_flight("a") is None and not flights.tasks()
    assert await flights.join("a") == 2  # nothing under way: a new run
