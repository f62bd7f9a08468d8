"""Hostile Last-Event-IDs: ids the history cannot hold are answered without reading it.

A client looping on a durable id of another history (foreign epoch) or past the
newest event must not make the gateway read the merchant's history once per
reconnect: the newest id (one shared HMGET) already says `resync`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from ops_support import get_metrics, metric, poll
from support import open_stream
from test_durable_e2e import DURABLE, connected, post

pytestmark = pytest.mark.timeout(120)

LOOPS, ROUNDS = 20, 10  # 200 reconnects


@pytest.mark.parametrize("workers", [1, 2])
async def test_foreign_and_past_head_ids_resync_without_a_history_read(
    gateway_factory: Any, merchant: Any, workers: int
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config={**DURABLE, "server": {"workers": workers}})
    status, _, reply = await post(gw, [{"merchantId": mid, "event": "stage", "data": n}
                                       for n in range(3)])
    assert status == 200, reply
    epoch = reply["ids"][-1].partition(":")[0]
    hostile = [f"{'0' if epoch[0] != '0' else '1'}{epoch[1:]}:1", f"{epoch}:999999"]
    before = await get_metrics(gw)

    async def loop(k: int) -> list[str]:
        reasons = []
        for n in range(ROUNDS):
            last_id = hostile[(k + n) % 2]
            async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": last_id}) as s:
                await connected(s)
                first = await s.next_event(10)
                assert first.event == "resync", first
                reasons.append(json.loads(first.data)["reason"])
        return reasons

    results = await asyncio.gather(*(loop(k) for k in range(LOOPS)))
    assert [r for reasons in results for r in reasons] == ["history_gap"] * LOOPS * ROUNDS

    async def counts() -> tuple[float, float]:  # summed over workers (synced about 1 s)
        samples = await get_metrics(gw)
        return (metric(samples, "gateway_replay_misses_total"),
                metric(samples, "gateway_history_reads_total"))

    misses0, reads0 = (metric(before, "gateway_replay_misses_total"),
                       metric(before, "gateway_history_reads_total"))
    (misses, reads), _ = await poll(
        counts, lambda c: c[0] - misses0 >= LOOPS * ROUNDS, 10, what="every resync counted"
    )
    assert misses - misses0 == LOOPS * ROUNDS
    assert reads == reads0  # not one history read
