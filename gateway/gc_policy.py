"""Keep cyclic-GC pauses short in a process that holds thousands of open streams.

Each open stream keeps a few dozen long-lived objects alive (aiohttp protocol,
request, response, task, our Stream), and every published event lives on in the
history ring. With 10,000 streams a gen-2 collection walks over a million
objects and stalls delivery for 100-400 ms every few seconds. So once a second
everything alive is moved to the permanent generation (`gc.freeze()`, O(1)):
automatic collections then only look at what is younger than a second.
Reference counting still frees almost everything; cyclic garbage among frozen
objects is reclaimed by a full collection every `FULL_COLLECTION_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

__all__ = ["FULL_COLLECTION_EVERY_S", "run_gc_policy"]

log = logging.getLogger(__name__)

FREEZE_EVERY_S = 1.0
FULL_COLLECTION_EVERY_S = 300.0


async def run_gc_policy() -> None:
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(FREEZE_EVERY_S)
        if time.monotonic() - last_full >= FULL_COLLECTION_EVERY_S:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            last_full = time.monotonic()
            log.debug(
                "full gc: %d unreachable, %.0f ms", found, (time.perf_counter() - started) * 1000
            )
        gc.freeze()
