"""Redis clients from a URL, the faults worth retrying, and the backoff between tries.

`socket_reader` is the one place that reaches into redis-py's internals: the
subscriber reads its socket directly (see reader.py). If a redis-py upgrade
moves that attribute, it fails here, loudly, and tests/test_library_adapters.py
fails with it. That test also checks that redis-py still packs through the
`pack_command` our connections override (for speed only).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry  # the asyncio one: the sync one makes redis-py warn
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "FAULTS", "backoff_s", "local_address", "make_client", "make_cluster_client", "socket_reader",
]

FAULTS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
_BACKOFF_CAP_S = 5.0
CONNECT_TIMEOUT_S = 3.0
# a wait for a pool connection is wall-clock: it may not preempt the callers' own
# lag-aware deadlines (runtime/deadlines.py, whose wall-clock cap is 4 x theirs)
_POOL_WAIT_S = 4 * CONNECT_TIMEOUT_S


def _packing_with_hiredis(
    connection_class: type[AbstractConnection],
) -> type[AbstractConnection]:
    """`connection_class` packing commands with one hiredis call. redis-py's packer
    walks every argument in Python first; a durable publish run has about ten per
    event, and that walk cost about a fifth of the gateway's CPU per event. What
    hiredis does not take (bool, None, bytearray; a command name with a space, which
    redis-py splits) goes the usual way, with redis-py's errors."""

    class HiredisPacking(connection_class):  # type: ignore[valid-type, misc]
        def pack_command(self, *args: Any) -> list[bytes | memoryview]:
            if args and args[0].__class__ is str and " " not in args[0]:
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass
            return super().pack_command(*args)

    HiredisPacking.__name__ = f"HiredisPacking{connection_class.__name__}"
    return HiredisPacking


def make_client(url: str, max_connections: int) -> aioredis.Redis:
    """A client whose pool never grows past `max_connections` and never retries by itself."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=_POOL_WAIT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # faults surface to the caller, which decides
        protocol=2,  # pub/sub messages as plain arrays for the hiredis reader
    )
    pool.connection_class = _packing_with_hiredis(pool.connection_class)  # the URL's kind kept
    return aioredis.Redis(connection_pool=pool)


def make_cluster_client(url: str, max_connections_per_node: int) -> RedisCluster:
    """A Redis Cluster client (commands routed by key slot) from the URL of any node."""
    return RedisCluster.from_url(
        url,
        max_connections=max_connections_per_node,
        socket_timeout=CONNECT_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        protocol=2,
        # a publish retried after a dropped connection could run twice (two ids): callers
        # get the fault (the HTTP API answers 503 + Retry-After) and decide
        retry=Retry(NoBackoff(), 0),
    )


def backoff_s(attempt: int) -> float:
    """Capped, jittered exponential backoff: 0.1 s doubling up to 5 s."""
    return min(_BACKOFF_CAP_S, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)


def socket_reader(pubsub: aioredis.client.PubSub) -> asyncio.StreamReader:
    """The StreamReader under a connected PubSub (redis-py keeps it in `_reader`)."""
    conn = pubsub.connection
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        raise RuntimeError(
            "redis-py no longer exposes the connection's StreamReader as `_reader`: "
            "update gateway/broker/connection.py:socket_reader for this redis-py version"
        )
    return reader


def local_address(pubsub: aioredis.client.PubSub | None) -> str | None:
    """"host:port" of a connected PubSub's local end (what Redis's CLIENT LIST calls
    `addr`, barring NAT); None when not connected or not over TCP."""
    conn = pubsub.connection if pubsub is not None else None
    writer = getattr(conn, "_writer", None)
    sockname = writer.get_extra_info("sockname") if writer is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return None
    host, port = sockname[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
