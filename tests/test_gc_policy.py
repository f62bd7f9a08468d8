"""gateway.runtime.gc_policy: survivors are frozen, frozen cyclic garbage is still reclaimed."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway.runtime import gc_policy
from tests.support import wait_for


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic GC can free it


@pytest.fixture
def fast_policy(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gc_policy, "FREEZE_EVERY_S", 0.01)
    monkeypatch.setattr(gc_policy, "FULL_COLLECTION_EVERY_S", 0.3)
    yield
    gc.unfreeze()


async def test_survivors_are_frozen_and_frozen_cycles_are_collected(fast_policy: None) -> None:
    task = asyncio.create_task(gc_policy.run_gc_policy())
    try:
        await wait_for(lambda: gc.get_freeze_count() > 0, interval=0.01)
        node = Node()
        ref = weakref.ref(node)
        frozen = gc.get_freeze_count()
        # a freeze after `node` was created takes it (and what it made) in
        await wait_for(lambda: gc.get_freeze_count() > frozen, interval=0.01)
        del node
        gc.collect()  # an ordinary collection does not look at the frozen generation
        assert ref() is not None
        # the periodic full collection frees it
        await wait_for(lambda: ref() is None, interval=0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_start_up_is_frozen_at_once_and_full_collections_are_its_own() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    task = asyncio.create_task(gc_policy.run_gc_policy())
    try:
        await wait_for(lambda: gc.get_freeze_count() > 0, interval=0.01, timeout=0.5)
        assert gc.get_threshold()[:2] == before[:2]
        assert gc.get_threshold()[2] >= 1 << 30  # no automatic full collection
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gc.unfreeze()
    assert gc.get_threshold() == before
