"""A merchant released and acquired again before Redis acknowledged its first
SUBSCRIBE: only the acknowledgement of the new SUBSCRIBE proves the channels live
(pure unit: the broker over a fake link whose acknowledgements the test sends)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from support import wait_for

from gateway.broker.subscriber import RedisBroker
from gateway.config import RedisConfig
from gateway.fanout.hub import Hub
from gateway.metrics import Metrics


class FakeLink:
    healthy = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, frozenset[bytes]]] = []
        self.routes: dict[bytes, tuple[str, str]] = {}

    def subscribe(self, channels: Iterable[bytes]) -> None:
        self.sent.append(("SUBSCRIBE", frozenset(channels)))

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        self.sent.append(("UNSUBSCRIBE", frozenset(channels)))


async def acquired(broker: RedisBroker, link: FakeLink, merchant_id: str) -> frozenset[bytes]:
    """`merchant_id` acquired on `link` (the broker's only link), its SUBSCRIBE acknowledged;
    its channels."""
    broker._links[f"fake-{id(link)}"] = link  # type: ignore[assignment]
    acquiring = asyncio.ensure_future(broker.acquire(merchant_id))
    await wait_for(lambda: link.sent, 1, 0.001)
    channels = link.sent[-1][1]
    for channel in channels:
        broker._subscribed(link, channel)  # type: ignore[arg-type]
    await asyncio.wait_for(acquiring, 1)
    return channels


async def test_an_old_subscribe_ack_does_not_make_a_new_subscription_ready() -> None:
    broker = RedisBroker(RedisConfig(url="redis://127.0.0.1:1"), Hub(history=10), Metrics(),
                         linger_s=0, on_resync=lambda merchants: None)
    link = FakeLink()
    broker._links["fake"] = link  # type: ignore[assignment]
    first = asyncio.ensure_future(broker.acquire("m1"))
    await wait_for(lambda: link.sent, 1, 0.001)
    first.cancel()  # the client left before Redis answered: released, and gone at once
    await asyncio.gather(first, return_exceptions=True)
    await wait_for(lambda: "m1" not in broker._subs, 1, 0.001)
    second = asyncio.ensure_future(broker.acquire("m1"))
    await wait_for(lambda: len(link.sent) == 3, 1, 0.001)
    assert [verb for verb, _ in link.sent] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]
    channels = link.sent[0][1]
    for channel in channels:  # the first SUBSCRIBE's acks, arriving now
        broker._subscribed(link, channel)  # type: ignore[arg-type]
    ready = broker._subs["m1"].ready
    assert not ready.done(), "ready on the acknowledgement of a SUBSCRIBE that was undone"
    for channel in channels:  # the second SUBSCRIBE's acks
        broker._subscribed(link, channel)  # type: ignore[arg-type]
    await asyncio.wait_for(second, 1)


async def test_messages_of_an_undone_subscription_do_not_enter_the_new_ring() -> None:
    """linger 0: a merchant's last stream closes (UNSUBSCRIBE) and a new one opens
    (SUBSCRIBE) while messages of the old subscription are still on the socket.
    Read after the new SUBSCRIBE was sent, they must not start the new ring: the
    events published between UNSUBSCRIBE and SUBSCRIBE reached nobody, and a ring
    "458, 459, 461" would replay 461 to a client at 459 (event 460 lost)."""
    hub = Hub(history=10)
    broker = RedisBroker(RedisConfig(url="redis://127.0.0.1:1"), hub, Metrics(),
                         linger_s=0, on_resync=lambda merchants: None)
    link = FakeLink()
    channels = await acquired(broker, link, "m1")
    broker.release("m1")
    await wait_for(lambda: "m1" not in broker._subs, 1, 0.001)
    second = asyncio.ensure_future(broker.acquire("m1"))
    await wait_for(lambda: len(link.sent) == 3, 1, 0.001)
    for offset in (458, 459):  # the old subscription's last messages, read only now
        hub.publish("m1", "progress", b"{}", f"e1:{offset}")
    for channel in channels:  # the new SUBSCRIBE's acks: live from here on
        broker._subscribed(link, channel)  # type: ignore[arg-type]
    await asyncio.wait_for(second, 1)
    hub.publish("m1", "progress", b"{}", "e1:461")
    replay, gap = hub.attach("m1", object(), "e1:459")  # type: ignore[arg-type]
    assert gap and replay == [], [entry.id for entry in replay]


async def test_a_merchant_moved_to_another_link_is_no_longer_read_from_the_old_one() -> None:
    """Cluster failover: the merchant moves to the new primary's link. The old link
    (a frozen primary, thawed after it was demoted) may still read messages of the
    merchant's channels: buffered ones, and writes it took before it learnt it was
    demoted. Its reader delivers only the channels in its own routes."""
    broker = RedisBroker(RedisConfig(url="redis://127.0.0.1:1"), Hub(history=10), Metrics(),
                         linger_s=60, on_resync=lambda merchants: None)
    old, new = FakeLink(), FakeLink()
    channels = await acquired(broker, old, "m1")
    assert set(old.routes) == set(channels) and not new.routes
    broker._link_for = lambda channel: new  # type: ignore[assignment,method-assign,return-value]
    broker._move("m1")
    assert not old.routes, "the old link would still deliver the moved merchant"
    assert set(new.routes) == set(channels)
    assert [verb for verb, _ in old.sent] == ["SUBSCRIBE", "UNSUBSCRIBE"]
    assert [verb for verb, _ in new.sent] == ["SUBSCRIBE"]
