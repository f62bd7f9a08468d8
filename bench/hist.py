"""Mergeable latency histograms: log buckets of 1 % width, exact count and max.

Each client process turns its raw samples into a histogram (a few hundred
buckets) and ships it to the parent, which adds the counts bucket by bucket.
Percentiles are then read from the merged counts, i.e. over every sample of
every process (never an average of per-process percentiles), with at most
1 % relative error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["EPS", "bucket", "from_samples", "merge", "quantile", "summary", "upper"]

EPS = 0.01  # relative bucket width
_LOG = math.log1p(EPS)
_FLOOR_NS = 1_000  # samples under 1 us count as 1 us


def bucket(ns: int) -> int:
    """Bucket index of a latency in nanoseconds (>= 0)."""
    return int(math.log(max(ns, _FLOOR_NS) / _FLOOR_NS) / _LOG)


def upper(idx: int) -> float:
    """Upper edge of bucket ``idx`` in nanoseconds: every sample in it is <= this."""
    return _FLOOR_NS * math.exp((idx + 1) * _LOG)


def from_samples(samples: Iterable[int]) -> dict[int, int]:
    """Histogram ``{bucket: count}`` of latencies in nanoseconds."""
    log, floor, inv = math.log, _FLOOR_NS, 1.0 / _LOG
    return dict(Counter(int(log(max(s, floor) / floor) * inv) for s in samples))


def merge(hists: Iterable[Mapping[int | str, int]]) -> dict[int, int]:
    """Sum of histograms (keys may be str after a JSON round trip)."""
    out: dict[int, int] = {}
    for h in hists:
        for k, c in h.items():
            out[int(k)] = out.get(int(k), 0) + int(c)
    return out


def quantile(hist: Mapping[int, int], q: float, max_ns: float | None = None) -> float | None:
    """The ``q`` quantile (0..1) in nanoseconds, as the upper edge of its bucket.

    Uses the rank ``int((count - 1) * q)`` (0-based), the same rank a sorted
    list of the raw samples would be indexed with; ``max_ns`` caps the answer.
    """
    total = sum(hist.values())
    if total == 0:
        return None
    rank = int((total - 1) * q)
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen > rank:
            v = upper(k)
            return min(v, max_ns) if max_ns is not None else v
    return None  # pragma: no cover - unreachable: seen reaches total


def summary(hist: Mapping[int, int], max_ns: float) -> dict[str, float]:
    """p50/p99/max in milliseconds (empty when there are no samples)."""
    if not hist:
        return {}
    return {
        "p50_ms": round((quantile(hist, 0.50, max_ns) or 0) / 1e6, 2),
        "p99_ms": round((quantile(hist, 0.99, max_ns) or 0) / 1e6, 2),
        "max_ms": round(max_ns / 1e6, 2),
        "samples": sum(hist.values()),
    }
