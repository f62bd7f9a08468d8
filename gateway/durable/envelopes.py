"""Checks of durable ids that do not continue a merchant's proven head.

The hub takes a durable message's id as it comes when it is the successor of
the last one it delivered for that merchant. Any other (the first after
subscribing or after a gap, a jump, a new epoch, an old id published again)
is held, with the merchant's messages behind it, until `EnvelopeCheck` has
asked Redis whether the history holds that very event (`history.holds`). A
plain PUBLISH that imitates the envelope is then delivered as a plain event, so
no client is handed an id of events not yet published (docs/publishing.md).

A genuine id that jumps past the one expected is also asked what it skipped
(`history.missed`): events of the subscribed types there never reached this
process (a failover, a replica resyncing after a freeze), and the merchant's
streams must resync before it is delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from ..runtime import deadlines
from .history import holds, missed
from .ids import DurableId

__all__ = ["EnvelopeCheck"]

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 3.0
_CONCURRENT_CHECKS = 2  # of the history client's few connections per node
_SETTLE_ROUNDS = 8
_FAULTS = (RedisError, RedisClusterException, OSError, TimeoutError)


class EnvelopeCheck:
    """The hub's `verify`: one HMGET + XRANGE per check (another XRANGE for a jump),
    answered through `done`. `events`: the event types the gateway subscribes to."""

    def __init__(self, client: Any, events: Collection[str]) -> None:
        self._client = client
        self._events = frozenset(events)
        self._checks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_CONCURRENT_CHECKS)

    def __call__(
        self,
        merchant_id: str,
        durable: DurableId,
        event: str,
        payload: bytes,
        expected: DurableId | None,
        done: Callable[[bool, bool], None],
    ) -> None:
        task = asyncio.ensure_future(
            self._check(merchant_id, durable, event, payload, expected, done))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(
        self,
        merchant_id: str,
        durable: DurableId,
        event: str,
        payload: bytes,
        expected: DurableId | None,
        done: Callable[[bool, bool], None],
    ) -> None:
        lost = expected is not None  # the hub asks with `expected` only for a jump
        try:
            async with self._slots:
                work = asyncio.ensure_future(
                    holds(self._client, merchant_id, durable, event, payload))
                genuine = await deadlines.wait(work, _CHECK_TIMEOUT_S)
                if genuine and expected is not None:
                    work = asyncio.ensure_future(
                        missed(self._client, merchant_id, expected, durable, self._events))
                    lost = await deadlines.wait(work, _CHECK_TIMEOUT_S)
        except _FAULTS as exc:
            # Redis cannot answer: trusted as it comes (a forgery during an outage is far
            # less likely than a real event losing its id), a jump taken as a loss
            log.warning("envelope check failed merchant=%s: %s", merchant_id, type(exc).__name__)
            genuine = True
        if not genuine:
            log.warning("merchant=%s: a message claimed durable id %s, which the history "
                        "does not hold; delivered as a plain event", merchant_id, durable)
        elif lost:
            log.info("merchant=%s: durable events before %s never arrived: resync",
                     merchant_id, durable)
        done(genuine, genuine and lost)

    async def settled(self) -> None:
        """Once the checks under way, and those their answers start, have answered
        (a replay's flush waits for it); bounded, a flood of forgeries cannot hold it."""
        for _ in range(_SETTLE_ROUNDS):
            if not self._checks:
                return
            await asyncio.wait(set(self._checks))

    async def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
