"""End to end: a real gateway process, real Redis, real PostgreSQL, exact SSE bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from support import (
    SSEStream,
    http_json,
    open_stream,
    publish,
    unique_merchant,
    wait_for,
)

from tools.services import PostgresServer, RedisServer, free_port

EVENT_ID = re.compile(r"^[0-9a-z]+-[0-9]+$")
ALLOWED_ORIGIN = "https://admin.example.com"


# -- helpers -------------------------------------------------------------------------


def new_merchant(pg: PostgresServer, active: bool = True) -> tuple[str, str]:
    mid, shop = unique_merchant()
    pg.add_merchant(mid, shop, active=active)
    return mid, shop


def channel(mid: str, event: str = "progress") -> str:
    return f"merchant:{mid}:{event}"


def connected_bytes(mid: str, shop: str, retry_ms: int = 3000) -> bytes:
    data = json.dumps({"merchantId": mid, "shop": shop}, separators=(",", ":"))
    return f"retry: {retry_ms}\nevent: connected\ndata: {data}\n\n".encode()


async def numsub(redis_url: str, name: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        ((_, count),) = await client.pubsub_numsub(name)
        return int(count)
    finally:
        await client.aclose()


async def other_clients(redis_url: str) -> list[dict[str, Any]]:
    """CLIENT LIST without the connection that asks."""
    client = aioredis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        me = await client.client_id()
        return [c for c in await client.client_list() if int(c["id"]) != me]
    finally:
        await client.aclose()


async def health(gw: Any) -> dict[str, Any]:
    status, _, body = await http_json(gw.url("/health"), timeout=5)
    assert isinstance(body, dict), body
    body["_status"] = status
    return body


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    status, hdrs, body = await http_json(url, headers=headers, timeout=10)
    assert status != 200, f"expected a refusal from {url}, got 200"
    assert hdrs.get("Content-Type", "").startswith("application/json"), hdrs
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body
    return status, hdrs, body


async def connected(s: SSEStream, mid: str, shop: str, retry_ms: int = 3000) -> None:
    assert s.status == 200, bytes(s.raw)
    assert await s.read_raw_until(b"\n\n", timeout=10) == connected_bytes(mid, shop, retry_ms)
    ev = await s.next_event(timeout=5)
    assert ev.event == "connected"


async def expect_no_event(s: SSEStream, marker_channel: str, redis_url: str) -> None:
    """Publish a marker on `marker_channel`; the stream's next event must be it."""
    marker = json.dumps({"marker": unique_merchant("k")[0]})
    assert await publish(redis_url, marker_channel, marker) == 1
    ev = await s.next_event(timeout=5)
    assert ev.data == marker, f"unexpected event before the marker: {ev!r}"


async def expect_no_event_all(
    streams: list[SSEStream], marker_channel: str, redis_url: str
) -> None:
    """One marker for several streams of one merchant: each one's next event is it."""
    marker = json.dumps({"marker": unique_merchant("k")[0]})
    assert await publish(redis_url, marker_channel, marker) == 1
    for s in streams:
        ev = await s.next_event(timeout=5)
        assert ev.data == marker, f"unexpected event before the marker: {ev!r}"


@contextlib.asynccontextmanager
async def many_streams(urls: list[str]) -> AsyncIterator[list[SSEStream]]:
    """Open all `urls` at the same instant over one client session."""
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=20),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
    )
    managers = [open_stream(u, session=session) for u in urls]
    streams: list[SSEStream] = []
    entered: list[Any] = []
    try:
        results = await asyncio.gather(*(m.__aenter__() for m in managers), return_exceptions=True)
        for m, r in zip(managers, results, strict=True):
            if isinstance(r, BaseException):
                continue
            entered.append(m)
            streams.append(r)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        yield streams
    finally:
        for m in entered:
            await m.__aexit__(None, None, None)
        await session.close()


# -- headers, bytes, events ---------------------------------------------------------------


async def test_headers_first_frame_and_event_bytes(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"sse": {"retry_ms": 4321}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        assert s.status == 200
        assert s.headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
        assert s.headers["Cache-Control"] == "no-cache, no-transform"
        assert s.headers["X-Accel-Buffering"] == "no"
        # no CORS headers when cors.allow_origins is empty
        assert "Access-Control-Allow-Origin" not in s.headers
        assert await s.read_raw_until(b"\n\n", timeout=10) == connected_bytes(mid, shop, 4321)

        payload = '{"jobId":"j1","pct":42}'
        assert await publish(redis_server.url, channel(mid), payload) == 1
        block = await s.read_raw_until(b"\n\n")
        m = re.fullmatch(rb"id: ([^\n]+)\nevent: progress\ndata: ([^\n]*)\n\n", block)
        assert m, block
        first_id = m[1].decode()
        assert EVENT_ID.match(first_id), first_id
        assert m[2] == payload.encode()

        # every configured event type, in publication order, with increasing ids
        ids = [first_id]
        for event in ("stage", "completion", "error"):
            assert await publish(redis_server.url, channel(mid, event), f'{{"e":"{event}"}}') == 1
            block = await s.read_raw_until(b"\n\n")
            m = re.fullmatch(rb"id: ([^\n]+)\nevent: (\w+)\ndata: ([^\n]*)\n\n", block)
            assert m, block
            assert m[2].decode() == event
            assert m[3] == f'{{"e":"{event}"}}'.encode()
            ids.append(m[1].decode())
        epochs = {i.rsplit("-", 1)[0] for i in ids}
        assert len(epochs) == 1
        seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4

        # the parsed view agrees with the bytes
        evs = await s.events(5)
        assert [e.event for e in evs] == ["connected", "progress", "stage", "completion", "error"]
        assert evs[0].retry == 4321
        assert evs[0].json() == {"merchantId": mid, "shop": shop}
        assert [e.id for e in evs[1:]] == ids
        assert evs[1].json() == {"jobId": "j1", "pct": 42}


async def test_multi_line_payload_becomes_data_lines(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart()
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        payload = "line1\r\nline2\rline3\n\nevent: completion\nid: 1-1\ndata: forged"
        assert await publish(redis_server.url, channel(mid), payload) == 1
        block = await s.read_raw_until(b"\n\n")
        m = re.fullmatch(rb"id: ([^\n]+)\nevent: progress\n(.*)", block, re.S)
        assert m, block
        assert m[2] == (
            b"data: line1\ndata: line2\ndata: line3\ndata: \n"
            b"data: event: completion\ndata: id: 1-1\ndata: data: forged\n\n"
        )
        ev = await s.next_event_of("progress")
        assert ev.data == "line1\nline2\nline3\n\nevent: completion\nid: 1-1\ndata: forged"
        assert ev.id == m[1].decode()
        # nothing else was dispatched from that payload
        await expect_no_event(s, channel(mid, "stage"), redis_server.url)


async def test_invalid_utf8_payload_is_replaced(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart()
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        assert await publish(redis_server.url, channel(mid), b"bad \xff byte") == 1
        block = await s.read_raw_until(b"\n\n")
        assert block.endswith("data: bad \ufffd byte\n\n".encode()), block


async def test_heartbeat_comment_lines(
    gateway_factory: Any, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"sse": {"heartbeat": 0.2}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        # two pings in a row, each its own block with the exact bytes
        assert await s.read_raw_until(b"\n\n", timeout=3) == b": ping\n\n"
        assert await s.read_raw_until(b"\n\n", timeout=3) == b": ping\n\n"
        assert s.comments[:2] == [" ping", " ping"]
        assert s.pending_events() == []  # comments dispatch no event


async def test_only_configured_events_are_forwarded(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"redis": {"events": ["progress", "custom"]}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        # nobody subscribes to an unconfigured event (no pattern subscriptions)
        assert await publish(redis_server.url, channel(mid, "other"), "x") == 0
        assert await publish(redis_server.url, channel(mid, "stage"), "x") == 0
        assert await numsub(redis_server.url, channel(mid, "stage")) == 0
        assert await publish(redis_server.url, channel(mid, "custom"), '{"c":1}') == 1
        ev = await s.next_event()
        assert (ev.event, ev.data) == ("custom", '{"c":1}')
        await expect_no_event(s, channel(mid), redis_server.url)


async def test_merchant_isolation(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart()
    m1, shop1 = new_merchant(postgres_server)
    m2, shop2 = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop1)) as s1, open_stream(gw.stream_url(shop2)) as s2:
        await connected(s1, m1, shop1)
        await connected(s2, m2, shop2)
        assert await publish(redis_server.url, channel(m2), '{"for":"m2"}') == 1
        ev = await s2.next_event()
        assert ev.data == '{"for":"m2"}'
        assert await publish(redis_server.url, channel(m1, "completion"), '{"for":"m1"}') == 1
        ev = await s1.next_event()
        assert (ev.event, ev.data) == ("completion", '{"for":"m1"}')
        await expect_no_event(s2, channel(m2, "stage"), redis_server.url)


# -- the stream's promises, end to end ------------------------------------------------------------


async def test_200_concurrent_streams_all_receive_the_next_publish(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"sse": {"max_connections_per_merchant": 1000}})
    mid, shop = new_merchant(postgres_server)
    async with many_streams([gw.stream_url(shop)] * 200) as streams:
        assert len(streams) == 200
        await asyncio.gather(*(connected(s, mid, shop) for s in streams))
        assert (await health(gw))["connections"] == 200
        assert await numsub(redis_server.url, channel(mid)) == 1
        payload = '{"jobId":"big","pct":1}'
        assert await publish(redis_server.url, channel(mid), payload) == 1
        evs = await asyncio.gather(*(s.next_event(timeout=10) for s in streams))
        assert all(e.event == "progress" and e.data == payload for e in evs)
        assert len({e.id for e in evs}) == 1


async def test_five_streams_share_one_subscription_and_connection(
    gateway_factory: Any, redis_factory: Any, postgres_server: PostgresServer
) -> None:
    redis = redis_factory()  # a private Redis: its client list is the gateway's alone
    gw = await gateway_factory.astart(redis=redis)
    m1, shop1 = new_merchant(postgres_server)
    m2, shop2 = new_merchant(postgres_server)

    async def canary_seen() -> bool:
        # the gateway's pool is complete once its canary publisher has connected
        return any(c.get("cmd") == "publish" for c in await other_clients(redis.url))

    async with open_stream(gw.stream_url(shop1)) as first:
        await connected(first, m1, shop1)
        await wait_for(canary_seen, timeout=10, message="(gateway canary connection)")
        with_one = len(await other_clients(redis.url))
        assert 1 <= with_one <= 3
        assert await numsub(redis.url, channel(m1)) == 1

        urls = [gw.stream_url(shop1)] * 4 + [gw.stream_url(shop2)] * 2
        async with many_streams(urls) as more:
            m1_streams = [first, *more[:4]]
            m2_streams = more[4:]
            await asyncio.gather(
                *(connected(s, m1, shop1) for s in more[:4]),
                *(connected(s, m2, shop2) for s in m2_streams),
            )
            for event in ("progress", "stage", "completion", "error"):
                assert await numsub(redis.url, channel(m1, event)) == 1
            assert len(await other_clients(redis.url)) == with_one
            pubsub_clients = [c for c in await other_clients(redis.url) if c["flags"] == "P"]
            assert len(pubsub_clients) == 1, pubsub_clients
            info = await _connected_clients(redis.url)
            assert info == with_one + 1  # + the connection that asks

            payload = '{"jobId":"five","pct":5}'
            assert await publish(redis.url, channel(m1), payload) == 1
            evs = await asyncio.gather(*(s.next_event() for s in m1_streams))
            assert [e.data for e in evs] == [payload] * 5
            assert len({e.id for e in evs}) == 1
            await expect_no_event_all(m2_streams, channel(m2), redis.url)


async def _connected_clients(redis_url: str) -> int:
    client = aioredis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        return int((await client.info("clients"))["connected_clients"])
    finally:
        await client.aclose()


async def test_unsubscribed_after_linger(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"sse": {"linger": 0.5}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as a, open_stream(gw.stream_url(shop)) as b:
        await connected(a, mid, shop)
        await connected(b, mid, shop)
        assert await numsub(redis_server.url, channel(mid)) == 1
        assert (await health(gw))["merchants"] == 1

    async def gone() -> bool:
        return await numsub(redis_server.url, channel(mid)) == 0

    await wait_for(gone, timeout=10, message="(NUMSUB to drop to 0 after linger)")
    for event in ("stage", "completion", "error"):
        assert await numsub(redis_server.url, channel(mid, event)) == 0
    body = await health(gw)
    assert (body["connections"], body["merchants"]) == (0, 0)


async def test_disconnect_is_cleaned_up_and_subscription_lingers(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart()  # default linger: 30 s
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        assert (await health(gw))["connections"] == 1
    # the client went away: the gateway notices without any write to it
    await wait_for(
        lambda: _health_value(gw, "connections", 0), timeout=10, message="(connections -> 0)"
    )
    # ... but keeps the merchant subscribed for the linger period
    body = await health(gw)
    assert body["merchants"] == 1
    assert await numsub(redis_server.url, channel(mid)) == 1
    await wait_for(
        lambda: (
            f"stream close merchant={mid} shop={shop} client=127.0.0.1 reason=client_gone"
            in gw.log_text()
        ),
        timeout=5,
    )


async def _health_value(gw: Any, key: str, expected: Any) -> bool:
    return (await health(gw))[key] == expected


# -- logs ----------------------------------------------------------------------------


async def test_client_address_in_logs(
    gateway_factory: Any, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart()
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        await wait_for(
            lambda: (
                f"stream open merchant={mid} shop={shop} client=127.0.0.1 replayed=0"
                in gw.log_text()
            ),
            timeout=5,
        )
    # X-Forwarded-For is honoured from a trusted proxy (127.0.0.1 by default)
    async with open_stream(gw.stream_url(shop), headers={"X-Forwarded-For": "198.51.100.7"}) as s:
        await connected(s, mid, shop)
        await wait_for(
            lambda: f"shop={shop} client=198.51.100.7 replayed=0" in gw.log_text(), timeout=5
        )
    await wait_for(
        lambda: f"shop={shop} client=198.51.100.7 reason=client_gone" in gw.log_text(),
        timeout=5,
    )


async def test_untrusted_peer_forwarded_for_is_ignored(
    gateway_factory: Any, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"server": {"trusted_proxies": ["10.9.9.9"]}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop), headers={"X-Forwarded-For": "198.51.100.8"}) as s:
        await connected(s, mid, shop)
        await wait_for(
            lambda: f"shop={shop} client=127.0.0.1 replayed=0" in gw.log_text(), timeout=5
        )
        assert "198.51.100.8" not in gw.log_text()


async def test_redis_source_logged_once_with_password_redacted(
    gateway_factory: Any, redis_factory: Any, postgres_server: PostgresServer
) -> None:
    password = "Redis-Pa55-e2e-secret"
    redis = redis_factory(password=password)
    gw = await gateway_factory.astart(redis=redis)
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s, mid, shop)
        assert await publish(redis.url, channel(mid), "authed") == 1
        assert (await s.next_event()).data == "authed"
    log = gw.log_text()
    assert len(re.findall(r"redis source: REDIS_URL", log)) == 1, log
    assert password not in log


# -- refusals --------------------------------------------------------------------------


INVALID_SHOPS = [
    None,
    "",
    "shop.example.com",
    "Shop.myshopify.com",
    "-shop.myshopify.com",
    "shop_1.myshopify.com",
    "a" * 63 + ".myshopify.com",
    "shop.myshopify.com.evil.test",
    "shop.myshopify.com\n",
    "evil.test/shop.myshopify.com",
    "myshopify.com",
]


async def test_invalid_shop_is_400(gateway_factory: Any, postgres_server: PostgresServer) -> None:
    gw = await gateway_factory.astart(config={"cors": {"allow_origins": [ALLOWED_ORIGIN]}})
    for shop in INVALID_SHOPS:
        status, _, body = await refused(gw.stream_url(shop))
        assert (status, body["error"]) == (400, "invalid_shop"), shop
        # an invalid shop wins over a bad origin (first row of the table)
        status, _, body = await refused(
            gw.stream_url(shop), headers={"Origin": "https://evil.example"}
        )
        assert (status, body["error"]) == (400, "invalid_shop"), shop


async def test_refusal_table(
    gateway_factory: Any, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(
        config={
            "cors": {"allow_origins": [ALLOWED_ORIGIN, "http://localhost:3000"]},
            "sse": {"max_connections_per_merchant": 2, "max_connections": 3},
        }
    )
    evil = {"Origin": "https://evil.example"}
    good = {"Origin": ALLOWED_ORIGIN}
    mid, shop = new_merchant(postgres_server)
    other_mid, other_shop = new_merchant(postgres_server)
    _, inactive_shop = new_merchant(postgres_server, active=False)
    _, unknown_shop = unique_merchant()

    # the longest valid label passes the shop check (and is unknown)
    status, _, body = await refused(gw.stream_url("a" * 62 + ".myshopify.com"))
    assert (status, body["error"]) == (403, "unknown_merchant")

    for s in (unknown_shop, inactive_shop):
        status, _, body = await refused(gw.stream_url(s))
        assert (status, body["error"]) == (403, "unknown_merchant"), s
        # unknown merchant wins over a bad origin
        status, _, body = await refused(gw.stream_url(s), headers=evil)
        assert (status, body["error"]) == (403, "unknown_merchant"), s

    status, hdrs, body = await refused(gw.stream_url(shop), headers=evil)
    assert (status, body["error"]) == (403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in hdrs
    # origins compare exactly
    for origin in (
        ALLOWED_ORIGIN + "/",
        "http://admin.example.com",
        "https://admin.example.com:8443",
    ):
        status, _, body = await refused(gw.stream_url(shop), headers={"Origin": origin})
        assert (status, body["error"]) == (403, "origin_not_allowed"), origin

    # a refusal answered to an allowed origin is readable by it
    status, hdrs, body = await refused(gw.stream_url("bad"), headers=good)
    assert (status, body["error"]) == (400, "invalid_shop")
    assert hdrs.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN

    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_stream(gw.stream_url(shop), headers=good))
        assert a.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "Origin" in [v.strip() for v in a.headers.get("Vary", "").split(",")]
        await connected(a, mid, shop)
        # no Origin header at all: not a cross-origin request, admitted, no CORS headers
        b = await stack.enter_async_context(open_stream(gw.stream_url(shop)))
        assert "Access-Control-Allow-Origin" not in b.headers
        await connected(b, mid, shop)

        # merchant at max_connections_per_merchant (2)
        status, hdrs, body = await refused(gw.stream_url(shop), headers=good)
        assert (status, body["error"]) == (429, "too_many_connections")
        assert hdrs.get("Access-Control-Allow-Origin") == ALLOWED_ORIGIN
        # origin_not_allowed wins over too_many_connections
        status, _, body = await refused(gw.stream_url(shop), headers=evil)
        assert (status, body["error"]) == (403, "origin_not_allowed")

        c = await stack.enter_async_context(
            open_stream(gw.stream_url(other_shop), headers={"Origin": "http://localhost:3000"})
        )
        await connected(c, other_mid, other_shop)
        assert c.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

        # process at max_connections (3): 503 with Retry-After
        status, hdrs, body = await refused(gw.stream_url(other_shop))
        assert (status, body["error"]) == (503, "unavailable")
        assert hdrs.get("Retry-After", "").isdigit(), hdrs
        # too_many_connections wins over unavailable
        status, _, body = await refused(gw.stream_url(shop))
        assert (status, body["error"]) == (429, "too_many_connections")

        # the admitted streams are unaffected by the refusals
        assert await publish(redis_server.url, channel(mid), "still-here") == 1
        assert (await a.next_event()).data == "still-here"
        assert (await b.next_event()).data == "still-here"

    # every slot is freed once the clients leave
    await wait_for(lambda: _health_value(gw, "connections", 0), timeout=10)
    async with open_stream(gw.stream_url(other_shop)) as d:
        await connected(d, other_mid, other_shop)

    status, _, metrics = await http_json(gw.url("/metrics"))
    assert status == 200
    for code in ("unknown_merchant", "origin_not_allowed", "too_many_connections", "unavailable"):
        assert re.search(rf'gateway_refusals_total\{{code="{code}"\}} [1-9]', metrics), code


async def test_wildcard_origin_allows_any(
    gateway_factory: Any, postgres_server: PostgresServer
) -> None:
    gw = await gateway_factory.astart(config={"cors": {"allow_origins": ["*"]}})
    mid, shop = new_merchant(postgres_server)
    async with open_stream(gw.stream_url(shop), headers={"Origin": "https://any.test"}) as s:
        assert s.headers["Access-Control-Allow-Origin"] == "https://any.test"
        await connected(s, mid, shop)


async def test_postgres_unreachable_is_503_for_uncached_shop(
    gateway_factory: Any, postgres_server: PostgresServer
) -> None:
    closed = f"postgresql://gateway@127.0.0.1:{free_port()}/gateway"
    gw = await gateway_factory.astart(
        env={"DATABASE_URL": closed}, config={"postgres": {"query_timeout": 1}}
    )
    _, shop = new_merchant(postgres_server)  # a real merchant, but this gateway cannot ask
    status, hdrs, body = await refused(gw.stream_url(shop))
    assert (status, body["error"]) == (503, "unavailable")
    assert hdrs.get("Retry-After", "").isdigit(), hdrs
    # the shop check still comes first
    status, _, body = await refused(gw.stream_url("nope"))
    assert (status, body["error"]) == (400, "invalid_shop")
    h = await health(gw)
    assert h["_status"] == 503 and h["status"] == "fail"
    assert h["postgres"]["status"] == "fail"
    assert h["redis"]["status"] == "ok"
