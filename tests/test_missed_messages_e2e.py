"""Durable events that never reached the gateway's subscriber, though Redis holds them.

A failover or a replica resyncing after a freeze can drop messages while the
link itself stays up: the next durable id then jumps past the one expected. The
merchant's streams must get `resync` before it, and the ring must not bridge
the jump (a reconnect from before it is replayed from Redis, whole).
Here the loss is made exactly: the publish script records an event in the
history but publishes it on a channel nobody subscribes to.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from support import open_stream
from test_durable_e2e import DURABLE, connected, publish_durably

from gateway.durable.publisher import AsyncPublisher

pytestmark = pytest.mark.timeout(60)


async def test_a_durable_id_that_jumps_resyncs_and_is_not_bridged_by_the_ring(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)

    client = aioredis.Redis.from_url(redis_server.url)
    lost = AsyncPublisher(client, channel="elsewhere:{merchant_id}:{event}", history=1000,
                          ttl_s=600)
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            await connected(s)
            first = await publish_durably(gw, mid, "d1")
            assert (await s.next_event(10)).id == first
            skipped = await lost.publish(mid, "stage", "d2")  # in the history, never delivered
            third = await publish_durably(gw, mid, "d3")
            resync, event = await s.events(2, 10)
    finally:
        await client.aclose()
    assert resync.event == "resync" and json.loads(resync.data) == {"reason": "redis_reconnected"}
    assert (event.id, event.data) == (third, "d3")
    async with open_stream(gw.stream_url(shop), headers={"Last-Event-ID": first}) as s:
        await connected(s)
        replayed = await s.events(2, 10)
    assert [(e.id, e.data) for e in replayed] == [(skipped, "d2"), (third, "d3")]
