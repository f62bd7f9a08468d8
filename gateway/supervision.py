"""Background loops that never die silently: a crash is logged and the loop restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["RESTART_DELAY_S", "supervised"]

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
