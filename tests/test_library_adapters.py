"""The two places that rely on library internals fail here, loudly, after an upgrade.

- redis-py: the subscriber reads its connection's StreamReader directly
  (gateway/broker/connection.py: socket_reader);
- aiohttp-sse: the per-stream ping task is replaced by one shared timer
  (gateway/web/sse.py overrides EventSourceResponse._ping).
"""

from __future__ import annotations

import asyncio
import inspect

import redis.asyncio as aioredis
from aiohttp_sse import EventSourceResponse

from gateway.broker.connection import socket_reader
from gateway.web.sse import SharedHeartbeatResponse
from tools.services import RedisServer


async def test_redis_py_exposes_the_subscriber_socket(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    pubsub = client.pubsub()
    try:
        await pubsub.execute_command("SUBSCRIBE", "adapter-probe")
        reader = socket_reader(pubsub)
        assert isinstance(reader, asyncio.StreamReader)
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert b"subscribe" in data and b"adapter-probe" in data  # the raw RESP ack
    finally:
        await pubsub.aclose()
        await client.aclose()


def test_aiohttp_sse_still_starts_its_ping_from_prepare() -> None:
    """If prepare() stopped calling _ping(), our override would silently do nothing."""
    assert inspect.iscoroutinefunction(EventSourceResponse._ping)
    assert "self._ping()" in inspect.getsource(EventSourceResponse.prepare)
    assert SharedHeartbeatResponse._ping is not EventSourceResponse._ping
