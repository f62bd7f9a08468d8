"""Newest-id reads of many merchants, sent together: one pipeline per loop turn.

A reconnect asks Redis for its merchant's newest durable id before it is
resumed (replay.py): whether the history still holds the client's id. The read
must be sent after the call (a read sent earlier may predate the client's own
event), so a reconnect storm, whose tabs of one merchant arrive seconds apart,
costs one read per tab. `HeadReads` keeps the promise and sends every read
asked for during one loop turn as one pipeline: a round trip per turn, not
per tab, and no pool connection held per tab while history reads wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..runtime import deadlines
from .ids import DurableId

__all__ = ["HeadReads"]

Head = DurableId | None


class HeadReads:
    def __init__(
        self, read: Callable[[Sequence[str]], Awaitable[list[Head]]], timeout_s: float
    ) -> None:
        self._read = read  # DurableHistory.read_heads
        self._timeout_s = timeout_s
        self._asked: dict[str, list[asyncio.Future[Head]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def read(self, merchant_id: str) -> asyncio.Future[Head]:
        """The merchant's newest durable id, read by a pipeline sent after this call;
        `deadlines.Late` past the timeout, or the Redis error. Cancelling the future
        leaves the others of its pipeline alone."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            loop.call_soon(self._send)
        future: asyncio.Future[Head] = loop.create_future()
        self._asked.setdefault(merchant_id, []).append(future)
        return future

    def tasks(self) -> list[asyncio.Task[None]]:
        """The pipelines under way (to stop them on shutdown)."""
        return list(self._sending)

    def _send(self) -> None:
        asked, self._asked = self._asked, {}
        task = asyncio.ensure_future(self._answer(asked))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, asked: dict[str, list[asyncio.Future[Head]]]) -> None:
        merchant_ids = list(asked)
        try:
            work = asyncio.ensure_future(self._read(merchant_ids))
            heads = await deadlines.wait(work, self._timeout_s)
        except Exception as exc:  # each caller meets the fault (a shared exception object)
            for futures in asked.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for futures in asked.values():
                for future in futures:
                    future.cancel()
            raise
        for merchant_id, head in zip(merchant_ids, heads, strict=True):
            for future in asked[merchant_id]:
                if not future.done():
                    future.set_result(head)
