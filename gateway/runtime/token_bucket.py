"""A token bucket that delays the excess instead of refusing it (nginx's `limit_req burst`)."""

from __future__ import annotations

import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens per second, burst `rate`; rate 0 admits everything.

    Like nginx's `limit_req ... burst`, a request without a token is delayed
    rather than refused: `reserve` books the next free token and says how long
    to wait for it, unless that is longer than `max_wait_s`.
    """

    def __init__(self, rate: float, max_wait_s: float) -> None:
        self._rate = rate
        self._max_wait_s = max_wait_s
        self._tokens = rate  # below 0: tokens already booked by waiting requests
        self._stamp = time.monotonic()

    def reserve(self) -> float | None:
        """Seconds until the booked token is due (0: now), or None: too far away."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        wait = max(0.0, (1 - self._tokens) / self._rate)
        if wait > self._max_wait_s:
            return None
        self._tokens -= 1
        return wait
