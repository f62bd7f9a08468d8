"""Background loops are supervised: a crash is logged and the loop runs again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.runtime import supervision
from gateway.runtime.supervision import stop_tasks, supervised


async def test_a_loop_that_raises_once_is_logged_and_running_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "RESTART_DELAY_S", 0.01)
    runs = 0
    second_run = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        second_run.set()
        await asyncio.Event().wait()  # a healthy loop runs until cancelled

    with caplog.at_level(logging.ERROR, logger="gateway.supervision"):
        task = supervised("heartbeat", heartbeat)
        await asyncio.wait_for(second_run.wait(), 2)
    assert runs == 2 and not task.done()
    crash = [r for r in caplog.records if "heartbeat crashed" in r.getMessage()]
    assert len(crash) == 1 and crash[0].exc_info is not None
    await stop_tasks([task])
    assert task.cancelled()


async def test_a_loop_that_returns_is_done_not_restarted() -> None:
    runs = 0

    async def switched_off() -> None:
        nonlocal runs
        runs += 1

    task = supervised("recheck", switched_off)
    await asyncio.wait_for(task, 2)
    assert runs == 1


async def test_stop_tasks_does_not_wait_forever_on_a_task_that_ignores_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # what a library absorbing a cancellation looks like

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="gateway.supervision"):
        await asyncio.wait_for(stop_tasks([task], timeout_s=0.2), 2)
    assert not task.done()
    assert any("stubborn did not stop" in r.getMessage() for r in caplog.records)
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)


def test_the_gateway_jobs_run_supervised() -> None:
    """Every periodic job goes through supervised(): none can die silently."""
    import inspect

    from gateway import app

    source = inspect.getsource(app.start_jobs)
    listed = source.split("return [", 1)[1].rsplit("]", 1)[0].strip().splitlines()
    assert len(listed) == 6 and all(line.strip().startswith("supervised(") for line in listed)
