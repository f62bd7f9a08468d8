"""Who may open a stream now: the connection caps.

Also the registry of open streams, which shutdown and revocation walk.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterator

from ..config import Config
from ..fanout.frames import Control
from ..fanout.stream import Stream
from ..fanout.stream_policy import CloseReason

__all__ = ["Admission"]


class Admission:
    def __init__(self, cfg: Config) -> None:
        self._retry_ms = cfg.sse.retry_ms
        self._drain_window_ms = int(cfg.server.shutdown_timeout * 1000)
        self._max_total = cfg.sse.max_connections
        self._max_per_merchant = cfg.sse.max_connections_per_merchant
        self._per_merchant: dict[str, set[Stream]] = defaultdict(set)
        self._count = 0
        self.empty = asyncio.Event()
        self.empty.set()

    def __len__(self) -> int:
        return self._count

    def merchant_full(self, merchant_id: str) -> bool:
        streams = self._per_merchant.get(merchant_id)
        return streams is not None and len(streams) >= self._max_per_merchant

    def process_full(self) -> bool:
        return self._count >= self._max_total

    def enter(self, stream: Stream) -> None:
        self._per_merchant[stream.merchant_id].add(stream)
        self._count += 1
        self.empty.clear()

    def leave(self, stream: Stream) -> None:
        streams = self._per_merchant.get(stream.merchant_id)
        if streams is not None and stream in streams:
            streams.discard(stream)
            self._count -= 1
            if not streams:
                del self._per_merchant[stream.merchant_id]
            if self._count == 0:
                self.empty.set()

    def streams(self) -> Iterator[Stream]:
        for streams in list(self._per_merchant.values()):
            yield from list(streams)

    def merchant_streams(self, merchant_id: str) -> list[Stream]:
        return list(self._per_merchant.get(merchant_id, ()))

    def close_all(self) -> int:
        """Shutdown: every stream gets `shutdown` with a retry spread over the drain
        window (so the clients do not all come back at once); how many."""
        window_ms = self._drain_window_ms
        low = min(self._retry_ms, window_ms)
        streams = list(self.streams())
        for stream in streams:
            final = Control("shutdown", {"reason": "shutdown"}, random.randint(low, window_ms))
            stream.close(CloseReason.SHUTDOWN, final)
        return len(streams)
