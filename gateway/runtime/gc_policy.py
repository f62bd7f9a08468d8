"""Keep cyclic-GC pauses short in a process that holds thousands of open streams.

Each open stream keeps a few dozen long-lived objects alive (aiohttp protocol,
request, response, task, our Stream), and every published event lives on in the
history ring. With 10,000 streams a gen-2 collection walks over a million
objects and stalls delivery for 100-400 ms every few seconds. So what start-up
left is frozen before the first stream, and then once a second everything alive
is moved to the permanent generation (`gc.freeze()`, O(1)): collections then
only look at what is younger than a second. Automatic full collections are off:
they would walk all of that second, again and again as it grows (a reconnect
storm allocates ~300,000 lasting objects a second, and paid 1 s of them in its
first second). Reference counting still frees almost everything; cyclic
garbage that reached the oldest or the permanent generation is reclaimed by a
full collection every `FULL_COLLECTION_EVERY_S`.

Large frames (a 256 KiB payload) are returned to the OS as soon as they are
freed: glibc's mmap threshold is pinned at 128 KiB (by default it rises after
the first large free, and a burst of large events then stays in the heap); the
heap itself is trimmed after each full collection.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time

__all__ = ["FULL_COLLECTION_EVERY_S", "release_large_frees", "run_gc_policy"]

log = logging.getLogger(__name__)

FREEZE_EVERY_S = 1.0
FULL_COLLECTION_EVERY_S = 300.0
_NO_AUTOMATIC_FULL = 1 << 30  # gen-1 collections before an automatic full one: never
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


_LIBC = _libc()


def release_large_frees() -> None:
    """Pin glibc's mmap threshold so large frees go straight back to the OS."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


async def run_gc_policy() -> None:
    release_large_frees()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _NO_AUTOMATIC_FULL)
    gc.collect()  # start-up's garbage, once
    gc.freeze()
    last_full = time.monotonic()
    try:
        while True:
            await asyncio.sleep(FREEZE_EVERY_S)
            if time.monotonic() - last_full >= FULL_COLLECTION_EVERY_S:
                started = time.perf_counter()
                gc.unfreeze()
                found = gc.collect()
                if _LIBC is not None:
                    _LIBC.malloc_trim(0)
                last_full = time.monotonic()
                log.debug("full gc: %d unreachable, %.0f ms",
                          found, (time.perf_counter() - started) * 1000)
            gc.freeze()
    finally:
        gc.set_threshold(*thresholds)
