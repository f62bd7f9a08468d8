"""A reconnected subscriber link resyncs its merchants before it delivers anything
of the new connection (real Redis; the interleaving forced, not waited for)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from support import wait_for

from gateway.broker.subscriber import RedisBroker
from gateway.config import RedisConfig
from gateway.fanout.frames import Control, Entry
from gateway.fanout.hub import Hub
from gateway.metrics import Metrics


class Recorder:
    def __init__(self) -> None:
        self.got: list[str] = []

    def deliver(self, entry: Entry | Control) -> None:
        self.got.append(entry.event)


async def test_a_message_read_before_the_control_ack_follows_the_resync(
    redis_server: Any,
) -> None:
    """Redis processes a PUBLISH between the link's SUBSCRIBE of the merchant channels
    and its SUBSCRIBE of the control channel, so the message reaches the new connection
    before the control channel's acknowledgement. Until the link reported the reconnect
    only at that acknowledgement, the stream got the message first and the `resync`
    announcing what it may have missed after it (chaos cluster seed 1802)."""
    hub = Hub(history=10)
    live: list[list[str]] = []

    def resync(merchant_ids: list[str]) -> None:
        hub.resync(merchant_ids, Control("resync", {"reason": "redis_reconnected"}))

    cfg = RedisConfig(url=redis_server.url, events=("progress",))
    broker = RedisBroker(cfg, hub, Metrics(), linger_s=60, on_resync=resync,
                         on_live=live.append)
    publisher = aioredis.Redis.from_url(redis_server.url)
    channel = cfg.channel.format(merchant_id="m-reconnect", event="progress")
    await broker.start()
    try:
        await wait_for(lambda: broker.healthy, 5)
        await broker.acquire("m-reconnect")
        tab = Recorder()
        hub.attach("m-reconnect", tab, None)
        link = next(iter(broker._links.values()))
        make_pubsub = link._client.pubsub

        def interleaving_pubsub() -> Any:
            pubsub = make_pubsub()
            send = pubsub.execute_command

            async def execute_command(*args: Any) -> Any:
                if args[-1] == link.canary.channel:  # the control channel's SUBSCRIBE
                    await publisher.publish(channel, b'{"n":1}')  # processed before it
                return await send(*args)

            pubsub.execute_command = execute_command
            return pubsub

        link._client.pubsub = interleaving_pubsub  # type: ignore[method-assign]
        link._cut()
        await wait_for(lambda: "progress" in tab.got, 10)
        await wait_for(lambda: live, 5)
        assert tab.got == ["resync", "progress"], tab.got
        assert live == [["m-reconnect"]]
    finally:
        await publisher.aclose()
        await broker.close()
