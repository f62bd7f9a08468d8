"""Background loops that never die silently: a crash is logged and the loop restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

__all__ = ["RESTART_DELAY_S", "stop_tasks", "supervised"]

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


def supervised(
    name: str, loop_factory: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None]:
    """Run `loop_factory()` in a task; if it raises, log it and start it again.

    A loop that returns normally is done (e.g. a feature switched off by config).
    Cancelling the task stops it.
    """
    return asyncio.create_task(_run(name, loop_factory), name=name)


async def _run(name: str, loop_factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    while True:
        try:
            await loop_factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s crashed; restarting in %.0f s", name, RESTART_DELAY_S)
        await asyncio.sleep(RESTART_DELAY_S)


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], timeout_s: float = 1.0) -> None:
    """Cancel `tasks` and wait for them, but never forever.

    A library can absorb one cancellation (aiopg awaits a shielded close that may
    never finish): what is still running after `timeout_s` is cancelled once more,
    then left behind with a log line rather than blocking shutdown.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(2):
        for task in pending:
            task.cancel()
        if not pending:
            return
        _, pending = await asyncio.wait(pending, timeout=timeout_s / 2)
    for task in pending:
        log.warning("background task %s did not stop; leaving it", task.get_name())
