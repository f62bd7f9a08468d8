"""The test infrastructure itself: throwaway services and the SSE client."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest
import redis
from aiohttp import web
from support import open_stream, publish, unique_merchant, wait_for, wait_until

from tools.services import (
    NginxServer,
    PostgresServer,
    RedisServer,
    free_port,
    nginx_main_conf,
    port_open,
)


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.ping()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_redis_kill_restart_keeps_port(redis_factory) -> None:
    r = redis_factory()
    port = r.port
    r.kill()
    assert not r.ping(0.2)
    r.restart()
    assert r.port == port
    assert r.ping()


def test_redis_freeze_thaw(redis_factory) -> None:
    r = redis_factory()
    r.freeze()
    t0 = time.monotonic()
    assert not r.ping(0.3)
    assert time.monotonic() - t0 < 2
    r.thaw()
    assert r.ping()


def test_redis_password_never_in_repr(redis_factory) -> None:
    r = redis_factory(password="hunter2-secret")
    assert r.ping()
    assert "hunter2" not in repr(r)
    client = redis.Redis.from_url(r.url)
    try:
        assert client.ping() is True
    finally:
        client.close()


async def test_publish_helper(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("t:chan")
        await wait_for(lambda: publish(redis_server.url, "t:chan", {"a": 1}), timeout=5)
        msg = None
        deadline = time.monotonic() + 5
        while msg is None and time.monotonic() < deadline:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert msg is not None and msg["data"] == b'{"a": 1}'
    finally:
        await pubsub.aclose()
        await client.aclose()


def test_postgres_add_merchant_round_trip(postgres_server: PostgresServer) -> None:
    mid, shop = unique_merchant()
    postgres_server.add_merchant(mid, shop)
    q = "SELECT id FROM merchants WHERE shop_domain = %(shop)s AND active"
    assert postgres_server.execute(q, {"shop": shop}) == [(mid,)]
    postgres_server.set_active(shop, False)
    assert postgres_server.execute(q, {"shop": shop}) == []
    postgres_server.set_active(shop, True)
    assert postgres_server.execute(q, {"shop": shop}) == [(mid,)]
    assert postgres_server.dsn.startswith("postgresql://gateway@127.0.0.1:")


def test_postgres_stop_start_keeps_data_and_port(postgres_factory) -> None:
    p = postgres_factory()
    port = p.port
    p.add_merchant("m-restart", "restart.myshopify.com")
    p.restart()
    assert p.port == port
    assert p.execute("SELECT id FROM merchants") == [("m-restart",)]
    p.kill()
    assert not port_open(port)
    p.restart()
    assert p.execute("SELECT id FROM merchants") == [("m-restart",)]
    p.stop()
    assert not port_open(port)


def test_postgres_freeze_hangs_an_open_connection_too(postgres_factory) -> None:
    """A frozen PostgreSQL hangs every query, also on a connection opened before:
    its backend leads its own process group, so the postmaster's group is not enough."""
    import psycopg2

    pg = postgres_factory()
    conn = psycopg2.connect(pg.dsn, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0")
        pg.freeze()
        answered = threading.Event()

        def query() -> None:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            answered.set()

        worker = threading.Thread(target=query, daemon=True)
        worker.start()
        assert not answered.wait(0.5)  # nothing answers while frozen
        pg.thaw()
        assert answered.wait(10)
        worker.join(10)
    finally:
        pg.thaw()
        conn.close()


def test_nginx_proxies(tmp_path) -> None:
    port = free_port()
    conf = nginx_main_conf(
        f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}"
    )
    import urllib.request

    with NginxServer(conf, port=port) as n:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5) as resp:
            assert resp.read() == b"ok"
        wait_until(lambda: "GET /x" in n.access_log_text(), timeout=5)
    assert not port_open(port)


# -- the SSE client against a tiny local aiohttp server ------------------------


async def _sse_app_server(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/s", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, f"http://127.0.0.1:{port}/s"


async def test_sse_client_parses_whatwg_frames() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'retry: 3000\nevent: connected\ndata: {"a": 1}\n\n')
        await resp.write(b": ping\n\n")
        # split across writes, CRLF and lone CR line endings, multi-line data
        await resp.write(b"id: 7\r\nevent: progress\r\ndata: one\r")
        await asyncio.sleep(0.01)
        await resp.write(b"\ndata:two\rdata\r\r")
        await resp.write(b"event: nodata\n\n")
        await resp.write(b"data: tail\n\n")
        return resp

    runner, url = await _sse_app_server(handler)
    try:
        async with open_stream(url) as s:
            assert s.status == 200
            first = await s.read_raw_until(b"\n\n")
            assert first == b'retry: 3000\nevent: connected\ndata: {"a": 1}\n\n'
            ev = await s.next_event()
            assert (ev.event, ev.retry, ev.json(), ev.id) == ("connected", 3000, {"a": 1}, None)
            ev = await s.next_event()
            assert ev.comments == [" ping"]
            assert (ev.id, ev.event, ev.data) == ("7", "progress", "one\ntwo\n")
            ev = await s.next_event()
            assert (ev.id, ev.event, ev.data, ev.last_event_id) == (None, "message", "tail", "7")
            assert s.undispatched == [[("event", "nodata")]]
            await s.wait_closed(5)
            with pytest.raises(EOFError):
                await s.next_event(1)
    finally:
        await runner.cleanup()


async def test_sse_client_refusal_body_and_timeout() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("shop") != "ok":
            return web.json_response({"error": "invalid_shop", "message": "x"}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(30)
        return resp

    runner, url = await _sse_app_server(handler)
    try:
        async with open_stream(url + "?shop=bad") as s:
            assert s.status == 400
            assert (await s.json_body())["error"] == "invalid_shop"
        async with open_stream(url + "?shop=ok") as s:
            assert s.headers["Content-Type"] == "text/event-stream"
            with pytest.raises(TimeoutError):
                await s.next_event(timeout=0.2)
    finally:
        await runner.cleanup()


# -- the gateway fixture --------------------------------------------------------


async def test_gateway_factory_round_trip(gateway_factory, redis_server, merchant) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart()
    assert gw.stream_url(shop, lastEventId="x").startswith(
        f"http://127.0.0.1:{gw.port}/api/realtime/events?shop="
    )
    async with open_stream(gw.stream_url(shop)) as s:
        assert s.status == 200, await s.json_body()
        first = await s.next_event()
        assert first.event == "connected"
        assert first.json()["merchantId"] == mid
        await wait_for(
            lambda: publish(redis_server.url, f"merchant:{mid}:progress", {"jobId": "j"}),
            timeout=5,
        )
        ev = await s.next_event()
        assert (ev.event, ev.json()) == ("progress", {"jobId": "j"})
        gw.send_signal(signal.SIGTERM)
        assert (await s.next_event_of("shutdown", timeout=15)).json() == {"reason": "shutdown"}
    assert gw.wait(15) == 0
    assert "client=" in gw.log_text()


def test_gateway_factory_bad_config_exit_code(gateway_factory) -> None:
    gw = gateway_factory.start({"server": {"port": "nope"}}, wait=False)
    assert gw.wait(15) == 2
    assert "server.port" in gw.log_text()
