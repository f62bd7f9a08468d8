"""publish_view in-process: a minimal app around it, a real Redis, a stand-in Gateway."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import unique_merchant

from gateway.durable.api import PUBLISH_API, PublishApi, publish_view
from gateway.durable.body import MAX_BODY_BYTES
from gateway.durable.gate import PUBLISHING, PublishGate
from gateway.durable.history import DurableHistory
from gateway.durable.ids import DurableId, history_keys
from gateway.metrics import Metrics
from tools.services import RedisServer, free_port

KEY = "pk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
EVENTS = ("progress", "stage", "completion", "error")

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[tuple[Client, PublishApi]]]


async def _unmeasured() -> None:
    return None


async def _no_flush() -> float:
    return 0.0


@pytest.fixture
async def make_client(redis_server: RedisServer) -> AsyncIterator[MakeClient]:
    made: list[tuple[Client, aioredis.Redis]] = []

    async def make(publish_key: str = KEY, redis_url: str | None = None) -> Any:
        redis = aioredis.Redis.from_url(redis_url or redis_server.url)
        history = DurableHistory(
            redis, channel="merchant:{merchant_id}:{event}", history=100, ttl_s=600
        )
        api = PublishApi(publish_key, 10, EVENTS, history, Metrics())
        app = web.Application()
        app[PUBLISH_API] = api
        app[PUBLISHING] = PublishGate(_unmeasured, _no_flush, Metrics())
        app.router.add_post("/api/realtime/events/publish", publish_view)
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        made.append((client, redis))
        return client, api

    yield make
    for client, redis in made:
        await client.close()
        await redis.aclose()


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(  # BytesIO: aiohttp warns about large raw bytes
        "/api/realtime/events/publish", data=io.BytesIO(data),
        headers=AUTH if headers is None else headers,
    )
    return resp.status, resp.headers, await resp.json()


def item(mid: str, event: str = "progress", data: Any = None) -> dict[str, Any]:
    return {"merchantId": mid, "event": event, "data": {"jobId": "j1"} if data is None else data}


async def test_disabled_without_a_publish_key(make_client: MakeClient) -> None:
    client, gw = await make_client(publish_key="")
    mid, _ = unique_merchant("pa")
    status, _, body = await post(client, item(mid))
    assert (status, body["error"]) == (404, "not_found")
    assert gw.metrics.publish_requests == {404: 1}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
     {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}],
)
async def test_missing_or_wrong_key(make_client: MakeClient, headers: dict[str, str]) -> None:
    client, gw = await make_client()
    mid, _ = unique_merchant("pa")
    status, _, body = await post(client, item(mid), headers)
    assert (status, body["error"]) == (401, "invalid_token")
    assert KEY not in json.dumps(body)
    assert gw.metrics.publish_requests == {401: 1}


async def test_one_object_and_an_array(
    make_client: MakeClient, redis_server: RedisServer
) -> None:
    client, gw = await make_client()
    m1, _ = unique_merchant("pa")
    m2, _ = unique_merchant("pa")
    status, _, body = await post(client, item(m1, data="plain text"))
    assert status == 200 and DurableId.parse(body["id"]) is not None
    batch = [item(m1, "stage", {"b": [1, 2]}), item(m2, "completion", None), item(m1, data=7)]
    status, _, body = await post(client, batch)
    assert status == 200 and len(body["ids"]) == 3
    ids = [DurableId.parse(i) for i in body["ids"]]
    assert [i.offset for i in ids if i] == [2, 1, 3]
    assert gw.metrics.publish_requests == {200: 2}
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        entries = await redis.xrange(history_keys(m1)[0])
    finally:
        await redis.aclose()
    assert [(e[1][b"e"], e[1][b"d"]) for e in entries] == [
        (b"progress", b"plain text"), (b"stage", b'{"b":[1,2]}'), (b"progress", b"7"),
    ]


BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "JSON"),
    (b'{"merchantId": "\xff"}', "JSON"),
    ("just a string", "object or an array"),
    ([], "1 to 1000"),
    ([item("m1")] * 1001, "1 to 1000"),
    ({"merchantId": "m1", "event": "progress"}, "missing data"),
    ({**item("m1"), "extra": 1}, "unknown extra"),
    (item("m 1"), "body.merchantId"),
    (item("m1", "resync"), "body.event"),
    ({"merchantId": "m1", "event": ["progress"], "data": 1}, "body.event"),
    (b'{"merchantId": "m1", "event": "progress", "data": NaN}', "JSON"),
    ([item("m1"), item("m1"), "x"], "[2]"),
    ([item("m1"), item("m1", data="ok"), item("m" * 129)], "[2].merchantId"),
]


@pytest.mark.parametrize(("body", "names"), BAD_BODIES)
async def test_malformed_bodies_publish_nothing(
    make_client: MakeClient, redis_server: RedisServer, body: Any, names: str
) -> None:
    client, gw = await make_client()
    mid, _ = unique_merchant("pa")
    text = json.dumps(body).replace('"m1"', json.dumps(mid)) if not isinstance(body, bytes) else ""
    status, _, reply = await post(client, text.encode() if text else body)
    assert (status, reply["error"]) == (400, "invalid_request"), reply
    assert names in reply["message"]
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await redis.exists(*history_keys(mid)) == 0  # nothing published
    finally:
        await redis.aclose()
    assert gw.metrics.publish_requests == {400: 1}


async def test_body_limit(make_client: MakeClient) -> None:
    client, gw = await make_client()
    mid, _ = unique_merchant("pa")
    envelope = json.dumps(item(mid, data=""))
    padding = "x" * (MAX_BODY_BYTES - len(envelope))
    exact = envelope.replace('"data": ""', f'"data": "{padding}"')
    assert len(exact.encode()) == MAX_BODY_BYTES
    status, _, body = await post(client, exact.encode())
    assert status == 200 and "id" in body
    status, _, body = await post(client, exact.encode() + b" ")
    assert (status, body["error"]) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        for _ in range(20):
            yield b" " * 65536
        yield exact.encode()

    resp = await client.post("/api/realtime/events/publish", data=chunks(), headers=AUTH)
    assert resp.status == 413 and (await resp.json())["error"] == "too_large"
    assert gw.metrics.publish_requests == {200: 1, 413: 2}


async def test_redis_down_is_503_with_retry_after(make_client: MakeClient) -> None:
    client, gw = await make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    mid, _ = unique_merchant("pa")
    for body in (item(mid), [item(mid)]):
        status, headers, reply = await post(client, body)
        assert (status, reply["error"]) == (503, "unavailable")
        assert 1 <= int(headers["Retry-After"]) <= 5
    assert gw.metrics.publish_requests == {503: 2}


async def test_a_read_only_replica_is_unavailable_not_a_refusal(
    make_client: MakeClient, redis_factory: Callable[..., RedisServer]
) -> None:
    """A primary demoted to a replica (a failover) answers READONLY: 503 `unavailable`,
    nothing recorded, and /health's publish check is not failed by it."""
    primary = redis_factory()
    replica = redis_factory(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    client, api = await make_client(redis_url=replica.url)
    mid, _ = unique_merchant("ro")
    status, headers, reply = await post(client, item(mid))
    assert (status, reply["error"]) == (503, "unavailable")
    assert "read-only" in reply["message"] and "Retry-After" in headers
    status, _, reply = await post(client, [item(mid), item(mid)])
    assert (status, reply["error"], reply["ids"]) == (503, "unavailable", [None, None])
    assert client.app is not None and client.app[PUBLISHING].failing is None
    assert api.metrics.publish_requests == {503: 2}
