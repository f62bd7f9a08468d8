"""A merchant released and acquired again before Redis acknowledged its first
SUBSCRIBE: only the acknowledgement of the new SUBSCRIBE proves the channels live
(the broker over a link whose acknowledgements the test sends: a fake link, or a
real one on a fake connection; and a real link on a real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from redis.crc import key_slot
from support import wait_for

from gateway.broker.link import SubscriberLink
from gateway.broker.subscriber import RedisBroker
from gateway.config import RedisConfig
from gateway.fanout.hub import Hub
from gateway.metrics import Metrics
from tools.services import RedisServer


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


class FakePubSub:
    """The connection a SubscriberLink sends on: records the commands; Redis's answers
    are what the test hands to the link's reader hook (`link._subscribed`)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    async def execute_command(self, *args: Any) -> None:
        self.sent.append(args)


def connected_link(
    on_subscribed: Callable[[SubscriberLink, bytes], None], sharded: bool = False,
    on_dropped: Callable[[SubscriberLink, bytes], None] = lambda link, channel: None,
) -> SubscriberLink:
    """A real SubscriberLink on a fake connection (no Redis): what it sends and forwards."""
    link = SubscriberLink(
        "redis://127.0.0.1:1", Hub(history=10), Metrics(), control=b"control", sharded=sharded,
        on_subscribed=on_subscribed, on_reconnecting=lambda link: None,
        on_reconnect=lambda link: None, on_dropped=on_dropped)
    link._pubsub = FakePubSub()  # type: ignore[assignment]
    link.healthy = True
    return link


def sent(link: SubscriberLink) -> list[str]:
    return [args[0] for args in link._pubsub.sent]  # type: ignore[union-attr]


async def test_only_the_answer_to_the_last_subscribe_reaches_the_broker() -> None:
    """Released and held again before Redis answered: the first SUBSCRIBE's answer does
    not prove the second one live."""
    answered: list[bytes] = []
    link = connected_link(lambda link, channel: answered.append(channel))
    link.subscribe([b"c"])
    await wait_for(lambda: sent(link) == ["SUBSCRIBE"], 1, 0.001)
    link.unsubscribe([b"c"])
    link.subscribe([b"c"])
    await wait_for(lambda: sent(link) == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"], 1, 0.001)
    link._subscribed(b"c")  # the first SUBSCRIBE's answer
    assert answered == [], "forwarded the answer to a SUBSCRIBE that was undone"
    link._subscribed(b"c")  # the second's
    assert answered == [b"c"]
    await link.close()


async def test_an_answer_read_while_the_next_subscribe_is_queued_proves_nothing() -> None:
    """linger 0: the first SUBSCRIBE's answer is read after the channel was released and
    held again, but before the link's flusher sent the new SUBSCRIBE (not counted yet).
    Redis had already dropped the channel: only the new SUBSCRIBE's answer proves it."""
    answered: list[bytes] = []
    link = connected_link(lambda link, channel: answered.append(channel))
    link.subscribe([b"c"])
    await wait_for(lambda: sent(link) == ["SUBSCRIBE"], 1, 0.001)
    link.unsubscribe([b"c"])
    link.subscribe([b"c"])  # queued: sent on the next loop iteration
    link._subscribed(b"c")  # the first SUBSCRIBE's answer, read first
    assert answered == [], "an answer proved a SUBSCRIBE not even sent yet"
    await wait_for(lambda: sent(link) == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"], 1, 0.001)
    link._subscribed(b"c")
    assert answered == [b"c"]
    await link.close()


async def test_a_subscribe_refused_with_moved_leaves_no_answer_due() -> None:
    """Redis Cluster: an SSUBSCRIBE sent to a node that no longer owns the slot is
    answered MOVED, never `ssubscribe`. When the slot (and the merchant) came back, the
    link took the next real answer for that one: 503 after 5 s on every new stream."""
    answered: list[bytes] = []
    dropped: list[bytes] = []
    link = connected_link(lambda link, channel: answered.append(channel), sharded=True,
                          on_dropped=lambda link, channel: dropped.append(channel))
    channel = b"merchant:{m0}:progress"
    link.subscribe([channel])
    await wait_for(lambda: sent(link) == ["SSUBSCRIBE"], 1, 0.001)
    link._redirected(f"MOVED {key_slot(channel)} 127.0.0.1:2")
    assert dropped == [b""], "the broker was not told to re-read the topology"
    link.unsubscribe([channel])  # the broker moves the merchant away, and later back
    link.subscribe([channel])
    await wait_for(lambda: sent(link) == ["SSUBSCRIBE", "SUNSUBSCRIBE", "SSUBSCRIBE"], 1, 0.001)
    link._subscribed(channel)
    assert answered == [channel], "the answer was swallowed for the refused SSUBSCRIBE"
    await link.close()


async def test_a_channel_held_and_released_while_connecting_is_never_sent() -> None:
    """Subscribed and released while the link connects (a cluster merchant moved onto
    it): nothing is sent for it. The flusher used to send the SUBSCRIBE on the new
    connection while UNSUBSCRIBE waited for a healthy link, so Redis kept the channel."""
    link = connected_link(lambda link, channel: None)
    link.healthy = False  # connecting: the connection is there, its control ack is not
    link.subscribe([b"c"])
    await asyncio.sleep(0.01)  # the flusher's turn (an event that must not happen)
    link.unsubscribe([b"c"])
    await asyncio.sleep(0.01)
    assert sent(link) == [], sent(link)
    await link.close()


async def test_a_merchant_queued_on_a_reconnecting_link_waits_for_its_own_answers() -> None:
    """A merchant placed on a link while it connects is only queued when the link comes
    up; the link's reconnect declares live what it subscribed before its control
    channel, not this merchant: it is live once Redis answers its own SUBSCRIBE."""
    broker = RedisBroker(RedisConfig(url="redis://127.0.0.1:1"), Hub(history=10), Metrics(),
                         linger_s=60, on_resync=lambda merchants: None)
    link = connected_link(broker._subscribed)
    broker._links["fake"] = link
    link.healthy = False
    sub = broker._subscribe("m1", link)
    link.healthy = True
    broker._link_reconnected(link)
    assert not sub.ready.done(), "declared live before its SUBSCRIBE was even sent"
    link._flusher = asyncio.ensure_future(link._flush_subscribes())  # as _connect starts it
    await wait_for(lambda: sent(link) == ["SUBSCRIBE"], 1, 0.001)
    for channel in link._pubsub.sent[0][1:]:  # type: ignore[union-attr]
        link._subscribed(channel)
    assert sub.ready.done()
    await broker.close()


async def test_an_answer_after_the_merchant_left_does_not_swallow_the_next_one() -> None:
    """linger 0: a tab opens and leaves before Redis answers its SUBSCRIBE, and the answer
    arrives after the UNSUBSCRIBE. The next tab's SUBSCRIBE must be proven by its own
    answer. The broker used to count the first answer as still due, and took the next
    one for it: every later stream of the merchant got 503 until Redis reconnected."""
    broker = RedisBroker(RedisConfig(url="redis://127.0.0.1:1"), Hub(history=10), Metrics(),
                         linger_s=0, on_resync=lambda merchants: None)
    link = connected_link(broker._subscribed)
    broker._links["fake"] = link
    first = asyncio.ensure_future(broker.acquire("m1"))
    await wait_for(lambda: sent(link) == ["SUBSCRIBE"], 1, 0.001)
    channels = link._pubsub.sent[0][1:]  # type: ignore[union-attr]
    first.cancel()  # the tab left: released, and gone at once (linger 0)
    await asyncio.gather(first, return_exceptions=True)
    await wait_for(lambda: sent(link) == ["SUBSCRIBE", "UNSUBSCRIBE"], 1, 0.001)
    for channel in channels:  # Redis answers the first SUBSCRIBE only now
        link._subscribed(channel)
    second = asyncio.ensure_future(broker.acquire("m1"))
    await wait_for(lambda: sent(link) == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"], 1, 0.001)
    for channel in channels:  # and the second
        link._subscribed(channel)
    await asyncio.wait_for(second, 1)
    await broker.close()


async def test_a_subscribe_never_sent_leaves_no_answer_due(redis_server: RedisServer) -> None:
    """Redis Cluster failover: a merchant moved onto a new node's link that has not
    connected yet (its SUBSCRIBE only queued) and expired before that link's first
    connect. Nothing was sent, so nothing is answered: the merchant's next stream is
    subscribed at once (it used to wait 5 s for an answer the broker swallowed, then 503)."""
    broker = RedisBroker(RedisConfig(url=redis_server.url), Hub(history=10), Metrics(),
                         linger_s=0, on_resync=lambda merchants: None)
    link = broker._link(redis_server.url, b"gateway:control:test-acks")
    broker._subscribe("m1", link)  # queued: the link has no connection yet
    broker._expire("m1")
    await link.start()
    await wait_for(lambda: link.healthy, 5, 0.01)
    await asyncio.wait_for(broker.acquire("m1"), 2)
    await broker.close()


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
