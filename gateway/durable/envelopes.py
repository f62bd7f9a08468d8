"""Checks of durable ids that do not continue a merchant's proven head.

The hub takes a durable message's id as it comes when it is the successor of
the last one it delivered for that merchant. Any other (the first after
subscribing or after a gap, a jump, a new epoch, an old id published again)
is held, with the merchant's messages behind it, until `EnvelopeCheck` has
asked Redis whether the history holds that very event (`history.holds_many`). A
plain PUBLISH that imitates the envelope is then delivered as a plain event, so
no client is handed an id of events not yet published (docs/publishing.md).

A genuine id that jumps past the one expected is also asked what it skipped
(`history.missed`): events of the subscribed types there never reached this
process (a failover, a replica resyncing after a freeze), and the merchant's
streams must resync before it is delivered.

Checks wait in one queue and go to Redis in batches: up to `_BATCH` claims
in one MULTI (one round trip), at most `_CONCURRENT_CHECKS` batches at a time
(of the history client's few connections per node). After a restart every
merchant's first durable event is checked at once; one claim per round trip
held the last merchants' events for hundreds of milliseconds at 7,000 msg/s.
On Redis Cluster a MULTI stays in one slot, so a batch holds one claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from ..fanout.hub import Hub
from ..fanout.verdict import Done, Proven
from ..runtime import deadlines
from .history_checks import first_lost, holds_many, missed
from .ids import DurableId

__all__ = ["EnvelopeCheck", "Flush", "merchant_flush"]

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 3.0
_CONCURRENT_CHECKS = 2  # batches in flight, of the history client's few connections per node
_BATCH = 64  # claims per MULTI
_FAULTS = (RedisError, RedisClusterException, OSError, TimeoutError)


class _Claim(NamedTuple):
    merchant_id: str
    durable: DurableId
    event: str
    payload: bytes
    expected: DurableId | None  # given for a jump: what was skipped is asked too
    proven: Proven  # given after a gap: whether the history still holds them is asked too
    done: Done


class EnvelopeCheck:
    """The hub's `verify`: claims batched into MULTIs of HMGET + XRANGE (another XRANGE
    for a jump), each answered through its `done`. `events`: the event types the
    gateway subscribes to."""

    def __init__(self, client: Any, events: Collection[str]) -> None:
        self._client = client
        self._events = frozenset(events)
        self._waiting: list[_Claim] = []
        self._checks: set[asyncio.Task[None]] = set()
        self._batch = 1 if isinstance(client, RedisCluster) else _BATCH

    def __call__(
        self,
        merchant_id: str,
        durable: DurableId,
        event: str,
        payload: bytes,
        expected: DurableId | None,
        proven: Proven,
        done: Done,
    ) -> None:
        self._waiting.append(
            _Claim(merchant_id, durable, event, payload, expected, proven, done))
        self._start()

    def _start(self) -> None:
        """One more batch under way, when a slot is free and claims wait."""
        if self._waiting and len(self._checks) < _CONCURRENT_CHECKS:
            batch, self._waiting = self._waiting[:self._batch], self._waiting[self._batch:]
            task = asyncio.ensure_future(self._check(batch))
            self._checks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._checks.discard(task)
        self._start()

    async def _check(self, batch: list[_Claim]) -> None:
        lost = [claim.expected is not None for claim in batch]  # asked only for a jump
        lost_from: list[DurableId | None] = [None] * len(batch)
        try:
            claims = [(c.merchant_id, c.durable, c.event, c.payload) for c in batch]
            genuine = await deadlines.wait(
                asyncio.ensure_future(holds_many(self._client, claims)), _CHECK_TIMEOUT_S)
            for i, claim in enumerate(batch):
                if genuine[i] and claim.expected is not None:
                    lost[i] = await deadlines.wait(asyncio.ensure_future(missed(
                        self._client, claim.merchant_id, claim.expected, claim.durable,
                        self._events)), _CHECK_TIMEOUT_S)
                if genuine[i] and claim.proven:
                    lost_from[i] = await deadlines.wait(asyncio.ensure_future(first_lost(
                        self._client, claim.merchant_id, claim.proven)), _CHECK_TIMEOUT_S)
        except _FAULTS as exc:
            # Redis cannot answer: trusted as it comes (a forgery during an outage is far
            # less likely than a real event losing its id), a jump taken as a loss
            log.warning("envelope check failed for %d merchant(s), first %s: %s", len(batch),
                        batch[0].merchant_id, type(exc).__name__)
            genuine = [True] * len(batch)
        for claim, real, gone, lost_at in zip(batch, genuine, lost, lost_from, strict=True):
            if not real:
                log.warning("merchant=%s: a message claimed durable id %s, which the history "
                            "does not hold; delivered as a plain event", claim.merchant_id,
                            claim.durable)
            elif gone:
                log.info("merchant=%s: durable events before %s never arrived: resync",
                         claim.merchant_id, claim.durable)
            claim.done(real, real and gone, lost_at if real else None)

    async def settled(self, held: Callable[[], bool]) -> None:
        """Once `held()` is false: the checks it waits for have answered, and those
        their answers start (a message held behind a checked one may need its own).
        Not bounded here: the caller's read deadline is (a merchant under a flood of
        forgeries may stay held; its read then fails, as on a Redis fault)."""
        while held() and self._checks:
            await asyncio.wait(set(self._checks), return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        self._waiting.clear()
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)


Flush = Callable[[str], Awaitable[float]]
"""`flush(merchant_id)`: once every message of the merchant published before the call
has reached its streams; the subscriber's round trip in ms."""


def merchant_flush(round_trip: Callable[[], Awaitable[float]], checks: EnvelopeCheck,
                   hub: Hub) -> Flush:
    """What a history or state read waits for before it is merged with live events:
    the subscriber's round trip (every message published before it has been read),
    then the checks of the merchant's held messages. Waiting for every check under
    way instead would end early behind a queue of other merchants' checks (after a
    reconnect, each merchant's first durable event is checked), and the read would
    merge while the merchant's own event is still held: that event would then reach
    a stream twice, or after a snapshot that holds it."""
    async def flush(merchant_id: str) -> float:
        elapsed = await round_trip()
        await checks.settled(lambda: hub.held_back(merchant_id))
        return elapsed

    return flush
