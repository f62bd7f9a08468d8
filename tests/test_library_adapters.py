"""The places that rely on library internals fail here, loudly, after an upgrade.

- redis-py: the subscriber reads its connection's StreamReader directly
  (gateway/broker/connection.py: socket_reader), and still packs commands
  through the `pack_command` the gateway's connections override;
- aiohttp-sse: the per-stream ping task is replaced by one shared timer
  (gateway/web/sse.py replicates EventSourceResponse.prepare without it);
- aiohttp: a stream writes to the payload writer's transport, honours
  `protocol.writing_paused`, awaits `drain()` and frames by `chunked`
  (gateway/web/writer.py: payload_writer); a stream's connection keeps no
  parser, request queue or keep-alive timer (gateway/web/stream_only.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from aiohttp_sse import EventSourceResponse
from redis.exceptions import DataError

from gateway.broker.connection import make_client, socket_reader
from gateway.web import writer as writer_adapter
from gateway.web.sse import SharedHeartbeatResponse
from gateway.web.stream_only import stream_only
from gateway.web.writer import payload_writer
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


async def test_redis_py_packs_through_our_hiredis_packer(redis_server: RedisServer) -> None:
    client = make_client(redis_server.url, 2)
    plain = aioredis.Connection()
    try:
        connection = await client.connection_pool.get_connection()
        try:
            assert type(connection).__name__ == "HiredisPackingConnection"  # the URL's kind kept
            calls: list[tuple[object, ...]] = []
            pack = connection.pack_command
            connection.pack_command = lambda *args: calls.append(args) or pack(*args)
            commands = [("EVALSHA", "x" * 40, 1, "k", b"\0raw", "t\u00e9xt", 7, 2.5, 1e-05),
                        ("SCRIPT LOAD", "return 1"), ("SET", "k", bytearray(b"v")),
                        ("SET", "k", memoryview(b"v"))]
            def wire(chunks: list[bytes | memoryview]) -> bytes:
                return b"".join(bytes(chunk) for chunk in chunks)

            assert wire(connection.pack_commands(commands)) == wire(plain.pack_commands(commands))
            assert len(calls) == len(commands)  # redis-py still packs through pack_command
        finally:
            await client.connection_pool.release(connection)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("adapter:\u00e9", "\u00fc").get("adapter:\u00e9")
            assert await pipe.execute() == [True, "\u00fc".encode()]
        for bad in (True, None):
            with pytest.raises(DataError):  # redis-py's refusal, as before
                await client.set("adapter:bad", bad)  # type: ignore[arg-type]
    finally:
        await client.aclose()
        await client.connection_pool.disconnect()  # a pool handed in is not closed with it


# sha256 of aiohttp-sse 3.0's EventSourceResponse.prepare source, which
# SharedHeartbeatResponse.prepare replicates without the ping task
_SSE_PREPARE_DIGEST = "b329ac057b8fa492"


def test_aiohttp_sse_prepare_is_still_what_ours_replicates() -> None:
    """If aiohttp-sse's prepare() changed, ours would silently miss what it now does:
    read it again, replicate it, then record the new digest here."""
    source = inspect.getsource(EventSourceResponse.prepare)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == _SSE_PREPARE_DIGEST, source
    assert inspect.iscoroutinefunction(EventSourceResponse._ping)
    assert SharedHeartbeatResponse._ping is not EventSourceResponse._ping
    assert SharedHeartbeatResponse.prepare is not EventSourceResponse.prepare


async def test_a_prepared_stream_has_no_ping_task_and_its_headers_are_sent() -> None:
    """No task per stream; the headers leave in prepare(), never held for a first frame
    (a stream's 200 must not wait for a Redis read)."""
    request = make_mocked_request("GET", "/api/realtime/events")
    response = SharedHeartbeatResponse(sep="\n")
    tasks = len(asyncio.all_tasks())
    writer = await response.prepare(request)
    assert writer is not None and len(asyncio.all_tasks()) == tasks, "no task per stream"
    assert response.prepared and response.chunked
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response._send_headers_immediately is True
    assert request.writer.write_headers.called, "headers sent in prepare()"
    assert response.is_connected() is False  # as once aiohttp-sse's ping task has ended
    response.stop_streaming()
    await response.wait()


@pytest.fixture(autouse=True)
def unchecked_writer_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """payload_writer checks a class once per process: each test starts unchecked."""
    monkeypatch.setattr(writer_adapter, "_checked", set())


async def test_aiohttp_payload_writer_has_what_a_stream_uses() -> None:
    """aiohttp's own StreamWriter passes the check, and `chunked` follows enable_chunking()."""
    loop = asyncio.get_running_loop()
    writer = StreamWriter(BaseProtocol(loop), loop)
    checked = payload_writer(writer)
    assert checked is writer and checked.chunked is False
    assert checked.transport is None and checked.protocol.writing_paused is False
    assert inspect.iscoroutinefunction(checked.drain)
    writer.enable_chunking()
    assert checked.chunked is True  # the attribute the framing is picked by is still live


@pytest.mark.parametrize("attribute", ["chunked", "transport", "protocol", "drain"])
async def test_the_writer_tripwire_fires_when_aiohttp_loses_an_attribute(
    monkeypatch: pytest.MonkeyPatch, attribute: str
) -> None:
    """As after an upgrade that renamed it: refused loudly, never written around."""
    loop = asyncio.get_running_loop()
    monkeypatch.delattr(StreamWriter, attribute)
    with pytest.raises(RuntimeError, match=f"payload writer has no {attribute}"):
        payload_writer(StreamWriter(BaseProtocol(loop), loop))


async def test_the_writer_tripwire_fires_without_flow_control(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.delattr(BaseProtocol, "writing_paused")
    with pytest.raises(RuntimeError, match=r"protocol\.writing_paused"):
        payload_writer(StreamWriter(BaseProtocol(loop), loop))


async def test_a_stream_only_connection_ignores_what_follows_and_closes_after() -> None:
    """Once `stream_only`: no keep-alive timer, parser or queue kept; a request sent
    behind the stream is never served, and the connection closes when it ends."""
    seen: list[str] = []
    release = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        protocol = request.protocol
        stream_only(protocol)
        assert protocol._keepalive_handle is None and protocol._parser is None
        await response.write(b"frame")
        await release.wait()
        assert not protocol._messages, "the request sent behind the stream was kept"
        return response

    loop = asyncio.get_running_loop()
    server = await loop.create_server(web.Server(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"frame" not in received:
            received += await asyncio.wait_for(reader.read(4096), 5)
        writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        release.set()
        while await asyncio.wait_for(reader.read(4096), 5):  # until the server closes
            pass
        assert seen == ["/stream"]
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
