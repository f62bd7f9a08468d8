"""The subscriber's hot loop: socket bytes -> parsed replies -> `hub.publish`.

redis-py sets the connection up (TLS, AUTH, SELECT, SUBSCRIBE); reading goes
straight through hiredis, because redis-py's per-message read path costs more
than the whole fan-out to ten streams. Each message is handed synchronously to
the hub, which writes it to every stream before the next one is parsed. A
durable message (durable/ids.py's envelope) is unwrapped and keeps its global id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from ..durable.ids import parse_envelope
from ..fanout.hub import Hub

__all__ = ["ReaderHooks", "read_messages"]

log = logging.getLogger(__name__)

_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ReaderHooks:
    """What the loop needs besides the hub: routing, the control channel, acks, latency."""

    channels: dict[bytes, tuple[str, str]]  # channel -> (merchant id, event)
    control: bytes
    on_control: Callable[[bytes], None]
    on_subscribed: Callable[[bytes], None]
    on_unsubscribed: Callable[[bytes], None]
    on_redirect: Callable[[str], None]  # the MOVED/ASK reply: "MOVED SLOT HOST:PORT"
    observe_latency: Callable[[float], None]


async def read_messages(reader: asyncio.StreamReader, hub: Hub, hooks: ReaderHooks) -> None:
    """Run until the connection fails (raises) or the task is cancelled.

    The latency observed per delivered message is socket receipt to the last
    socket write of its fan-out; control-channel canaries are not observed.
    """
    parser = hiredis.Reader()
    channels = hooks.channels
    publish = hub.publish
    observe = hooks.observe_latency
    clock = time.perf_counter
    control = hooks.control
    while True:
        data = await reader.read(_READ_BYTES)
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        received = clock()
        parser.feed(data)
        while (msg := parser.gets()) is not False:
            if isinstance(msg, hiredis.ReplyError):
                if (reply := str(msg)).startswith(("MOVED ", "ASK ")):  # cluster: slot moved
                    hooks.on_redirect(reply)
                    continue
                raise RedisConnectionError(f"Redis error on the subscriber: {msg}")
            kind = msg[0]
            if kind == b"message" or kind == b"smessage":
                target = channels.get(msg[1])
                if target is not None:
                    payload = msg[2]
                    event_id = None
                    if payload[:1] == b"\x00" and (durable := parse_envelope(payload)):
                        event_id, payload = durable
                    try:
                        if publish(target[0], target[1], payload, event_id) is not None:
                            observe(clock() - received)
                    except Exception:  # a bug, but never worth every merchant's fan-out
                        log.exception("fan-out failed merchant=%s", target[0])
                elif msg[1] == control:
                    hooks.on_control(msg[2])
            elif kind == b"subscribe" or kind == b"ssubscribe":
                hooks.on_subscribed(msg[1])
            elif kind == b"sunsubscribe":  # also sent unasked when a cluster slot moves
                hooks.on_unsubscribed(msg[1])
