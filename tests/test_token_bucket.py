"""The new-lookup rate: a token bucket that delays the excess, then refuses (pure unit)."""

from __future__ import annotations

import pytest

from gateway.runtime import token_bucket
from gateway.runtime.token_bucket import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(token_bucket.time, "monotonic", fake)
    return fake


def test_burst_then_booked_tokens_then_refusal(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, max_wait_s=1.0)
    assert [bucket.reserve() for _ in range(10)] == [0.0] * 10  # the burst
    waits = [bucket.reserve() for _ in range(10)]
    assert waits == pytest.approx([0.1 * k for k in range(1, 11)])  # each books the next
    assert bucket.reserve() is None  # 1.1 s ahead: refused, and it books nothing
    clock.now += 0.5
    assert bucket.reserve() == pytest.approx(0.6)  # half a second later: 5 booked ahead


def test_refills_up_to_the_burst_only(clock: Clock) -> None:
    bucket = TokenBucket(rate=2, max_wait_s=0)
    assert bucket.reserve() == bucket.reserve() == 0.0
    assert bucket.reserve() is None
    clock.now += 60
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, None]


def test_rate_zero_admits_everything(clock: Clock) -> None:
    bucket = TokenBucket(rate=0, max_wait_s=0)
    assert all(bucket.reserve() == 0.0 for _ in range(1000))
