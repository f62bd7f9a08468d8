# ruff: noqa: ASYNC109  (helpers take explicit timeout= arguments, like support.py)
"""Helpers of the fault, health and shutdown end-to-end tests.

    status, body, elapsed = await get_health(gw)
    m = await get_metrics(gw);  metric(m, "gateway_refusals_total", code="unavailable")
    (status, body, elapsed), accepted_at = await poll(lambda: get_health(gw), ok, 10)

Streams are read with ``support.SSEStream``; ``poll`` is ``support.wait_for``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from support import wait_for

__all__ = [
    "Timeline",
    "get_health",
    "get_metrics",
    "metric",
    "parse_metrics",
    "poll",
]


async def get_health(gw: Any, path: str = "/health", timeout: float = 10) -> tuple[int, Any, float]:
    """GET ``path`` on a fresh connection: (status, JSON body or text, seconds taken)."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(force_close=True),
        ) as session,
        session.get(gw.url(path)) as resp,
    ):
        text = await resp.text()
        elapsed = time.monotonic() - started
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, elapsed


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name' or 'name{k="v",...}': value} (labels sorted)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        key = name
        if labels:
            pairs = sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
            if pairs:
                key += "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"
        out[key] = float(value)
    return out


async def get_metrics(gw: Any) -> dict[str, float]:
    status, body, _ = await get_health(gw, "/metrics")
    assert status == 200, (status, body)
    assert isinstance(body, str)
    return parse_metrics(body)


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """One sample's value; KeyError names what was missing."""
    key = name
    if labels:
        key += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    if key not in samples:
        raise KeyError(f"{key} not in /metrics: {sorted(samples)}")
    return samples[key]


async def poll(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "",
) -> tuple[Any, float]:
    """``support.wait_for`` over ``probe`` until ``accept(result)``; (result, when accepted).

    The last result is named in the TimeoutError.
    """
    last: list[Any] = [None]

    async def accepted() -> tuple[Any, float] | None:
        last[0] = result = await probe()
        return (result, time.monotonic()) if accept(result) else None

    try:
        return await wait_for(accepted, timeout, interval, what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last result: {last[0]!r}") from None


class Timeline:
    """Named monotonic stamps, printed as a table at the end of a test."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> float:
        self.rows.append((name, seconds))
        return seconds

    def print(self) -> None:
        print(f"\n== {self.title} ==")
        for name, seconds in self.rows:
            print(f"   {name:<44} {seconds:7.3f} s")
