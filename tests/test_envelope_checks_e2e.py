"""End to end: the envelope checks after a start go to Redis in batches.

A gateway that has just subscribed knows no merchant's newest durable id, so
the first durable event of each merchant is held until Redis confirms the
history holds it (docs/publishing.md, forged envelopes). With many merchants
publishing at once those checks share MULTIs instead of one round trip each,
and a forged envelope among them still goes out as a plain event.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from support import SSEStream, open_stream, unique_merchant

from gateway.durable.ids import DurableId
from gateway.durable.publisher import AsyncPublisher

MERCHANTS = 100


async def test_first_events_of_many_merchants_are_checked_in_batches(
    gateway_factory: Any, postgres_server: Any, redis_server: Any
) -> None:
    merchants = [unique_merchant("eb") for _ in range(MERCHANTS)]
    for mid, shop in merchants:
        postgres_server.add_merchant(mid, shop)
    # no snapshot read on connect: every MULTI counted below is an envelope check
    gw = await gateway_factory.astart(config={"sse": {"snapshot": False}})
    client = aioredis.Redis.from_url(redis_server.url)
    async with contextlib.AsyncExitStack() as stack:
        streams: list[SSEStream] = [
            await stack.enter_async_context(open_stream(gw.stream_url(shop)))
            for _, shop in merchants]
        for stream in streams:
            assert (await stream.next_event(10)).event == "connected"
        forger = merchants[0][0]  # its first message claims an id no history holds
        await client.publish(f"merchant:{forger}:stage", b"\x00gw1:f0f0f0:1\x00forged")
        forged = await streams[0].next_event(20)
        assert forged.data == "forged" and ":" not in str(forged.id), forged  # plain
        await client.config_resetstat()
        outcomes = await AsyncPublisher(client).publish_many(
            [(mid, "stage", f"first {mid}".encode()) for mid, _ in merchants])
        firsts = await asyncio.gather(*(s.next_event(20) for s in streams))
        calls = (await client.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0)
    await client.aclose()
    for (mid, _), outcome, event in zip(merchants, outcomes, firsts, strict=True):
        assert event.data == f"first {mid}", event
        assert event.id == outcome.id and DurableId.parse(str(event.id)) is not None
    # one MULTI per check would be 100; batched, a handful
    assert 1 <= calls <= MERCHANTS // 4, f"{calls} MULTIs for {MERCHANTS} first events"
