"""The gateway behind a real nginx configured with the shipped config/nginx.conf.

Only the snippet's documented placeholders are replaced (upstream address,
listen directive, access-log path), plus ``proxy_read_timeout`` in the
read-timeout test and the upstream's server line (two gateways, then one of
them marked ``down``) in the affinity and draining test.  Everything runs on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path

import aiohttp
import jwt
from support import http_json, open_stream, publish, unique_merchant, wait_for

from tools.services import NginxServer, free_port, nginx_main_conf

REPO_ROOT = Path(__file__).resolve().parent.parent
SNIPPET = REPO_ROOT / "config" / "nginx.conf"
STREAM_PATH = "/api/realtime/events"
SECRET = "nginx-e2e-session-token-secret-0123456789"


def nginx_conf(
    gateway_port: int,
    nginx_port: int,
    read_timeout: str | None = None,
    upstream_servers: list[str] | None = None,
) -> str:
    """A complete nginx.conf: the shipped snippet with its placeholders replaced.

    ``upstream_servers`` replaces the upstream's one ``server 127.0.0.1:8080;``
    line with several (e.g. ``["127.0.0.1:P1", "127.0.0.1:P2 down"]``).
    """
    text = SNIPPET.read_text()
    for placeholder in ("127.0.0.1:8080", "listen 80;", "/var/log/nginx/gateway_access.log"):
        assert placeholder in text, f"config/nginx.conf lost its placeholder {placeholder!r}"
    if upstream_servers is not None:
        assert text.count("    server 127.0.0.1:8080;\n") == 1
        lines = "".join(f"    server {s};\n" for s in upstream_servers)
        text = text.replace("    server 127.0.0.1:8080;\n", lines)
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
    text = text.replace("/var/log/nginx/gateway_access.log", "@PREFIX@/logs/gateway_access.log")
    if read_timeout is not None:
        # only the stream location's timeout, the one an idle stream runs into
        assert text.count("proxy_read_timeout 1h;") == 1
        text = text.replace("proxy_read_timeout 1h;", f"proxy_read_timeout {read_timeout};")
    return nginx_main_conf(text)


def start_nginx(nginx_factory, gateway_port: int, read_timeout: str | None = None) -> NginxServer:
    port = free_port()
    n: NginxServer = nginx_factory(nginx_conf(gateway_port, port, read_timeout), port=port)
    return n


def nginx_url(n: NginxServer, shop: str, **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"shop": shop, **query}.items())
    return f"http://127.0.0.1:{n.port}{STREAM_PATH}?{q}"


def session_token(shop: str, ttl: int = 60) -> str:
    now = int(time.time())
    claims = {"dest": f"https://{shop}", "exp": now + ttl, "nbf": now - 5, "sub": "42"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_first_event_arrives_through_nginx_unbuffered(
    gateway_factory, nginx_factory, redis_server, merchant
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart()
    n = start_nginx(nginx_factory, gw.port)

    # The client offers gzip: the snippet must not compress (compression buffers).
    async with open_stream(nginx_url(n, shop), headers={"Accept-Encoding": "gzip"}) as s:
        assert s.status == 200
        assert s.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in s.headers
        connected = await s.next_event_of("connected", timeout=5)
        assert connected.json()["merchantId"] == mid

        # A small payload: a buffering proxy would hold it (its buffer is far
        # from full) until the heartbeat 15 s later or the stream's end.
        t0 = time.monotonic()
        assert await publish(redis_server.url, f"merchant:{mid}:progress", {"jobId": "j", "p": 1})
        ev = await s.next_event(timeout=2)
        elapsed = time.monotonic() - t0
        assert ev.event == "progress"
        assert ev.json() == {"jobId": "j", "p": 1}
        assert elapsed < 2
        # nothing else was needed to push it out: no heartbeat in between
        assert ev.comments == []


async def test_idle_stream_outlives_nginx_read_timeout(
    gateway_factory, nginx_factory, redis_server, merchant
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart(config={"sse": {"heartbeat": 0.5}})
    n = start_nginx(nginx_factory, gw.port, read_timeout="2s")
    assert "proxy_read_timeout 2s;" in (n.prefix / "nginx.conf").read_text()

    async with open_stream(nginx_url(n, shop)) as s:
        assert s.status == 200
        await s.next_event_of("connected", timeout=5)
        # The point of the test is idle time: twice nginx's read timeout with
        # nothing published. Without heartbeats nginx cuts the stream at 2 s.
        await asyncio.sleep(4)
        assert not s.closed, f"nginx closed the idle stream: {n.error_log_text()[-2000:]}"
        assert s.comments.count(" ping") >= 4
        assert await publish(redis_server.url, f"merchant:{mid}:stage", {"stage": "late"})
        ev = await s.next_event(timeout=2)
        assert (ev.event, ev.json()) == ("stage", {"stage": "late"})
        assert not s.closed


async def test_gateway_logs_forwarded_client_address(
    gateway_factory, nginx_factory, merchant
) -> None:
    _, shop = merchant
    gw = await gateway_factory.astart()  # trusted_proxies: [127.0.0.1] (default)
    n = start_nginx(nginx_factory, gw.port)

    def clients() -> list[str]:
        return re.findall(r"stream open .*client=(\S+)", gw.log_text())

    # A client behind another proxy that reported 203.0.113.7; nginx appends
    # its peer (127.0.0.1, trusted): "203.0.113.7, 127.0.0.1". The gateway
    # logs the nearest untrusted hop.
    async with open_stream(nginx_url(n, shop), headers={"X-Forwarded-For": "203.0.113.7"}) as s:
        assert s.status == 200
        await s.next_event_of("connected", timeout=5)
        seen = await wait_for(clients, timeout=5)
        assert seen == ["203.0.113.7"]

    # The same header from a client that is not a trusted proxy (source
    # 127.0.0.2, still loopback): nginx must append that peer, so the gateway
    # logs 127.0.0.2, not the spoofed value. Without $proxy_add_x_forwarded_for
    # the client's own header would pass through unchanged and be believed.
    connector = aiohttp.TCPConnector(force_close=True, local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        open_stream(
            nginx_url(n, shop), headers={"X-Forwarded-For": "203.0.113.7"}, session=session
        ) as s,
    ):
        assert s.status == 200
        await s.next_event_of("connected", timeout=5)
        seen = await wait_for(lambda: len(clients()) >= 2 and clients(), timeout=5)
        assert seen[1] == "127.0.0.2"


async def test_nginx_access_log_holds_no_token_or_ticket(
    gateway_factory, nginx_factory, redis_server, merchant
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart(config={"auth": {"session_token_secret": SECRET}})
    n = start_nginx(nginx_factory, gw.port)
    base = f"http://127.0.0.1:{n.port}{STREAM_PATH}"
    token = session_token(shop)

    # the ticket flow through nginx
    status, _, body = await http_json(
        f"{base}/ticket?shop={shop}", "POST", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body
    ticket = body["ticket"]

    async with open_stream(nginx_url(n, shop, ticket=ticket)) as s:
        assert s.status == 200
        await s.next_event_of("connected", timeout=5)
        assert await publish(redis_server.url, f"merchant:{mid}:progress", {"jobId": "t"})
        assert (await s.next_event(timeout=5)).event == "progress"
    # a session token straight in the query string (allowed by the gateway)
    async with open_stream(nginx_url(n, shop, token=token)) as s:
        assert s.status == 200
        await s.next_event_of("connected", timeout=5)
    # refusals are logged too: a bad ticket and a bad token
    status, _, body = await http_json(nginx_url(n, shop, ticket=ticket + "x"))
    assert (status, body["error"]) == (401, "invalid_token")
    status, _, body = await http_json(nginx_url(n, shop, token=token[:-2]))
    assert (status, body["error"]) == (401, "invalid_token")

    access_log = n.prefix / "logs" / "gateway_access.log"

    def logged_requests() -> list[str]:
        lines = access_log.read_text().splitlines() if access_log.exists() else []
        return lines if len(lines) >= 5 else []

    # streams are logged when they end (after the client left)
    lines = await wait_for(logged_requests, timeout=5, message="(5 access-log lines)")
    text = "\n".join(lines)
    assert text.count(STREAM_PATH) >= 5, text
    assert " 401 " in text and " 200 " in text, text
    for secret in (ticket, token, ticket.split(".")[-1], token.split(".")[-1]):
        assert secret not in text
    assert "token=" not in text and "ticket=" not in text, text
    # the gateway's own log neither
    assert ticket not in gw.log_text() and token not in gw.log_text()


async def test_upstream_hash_keeps_a_merchant_on_one_gateway_and_drains(
    gateway_factory, nginx_factory, postgres_server, redis_server
) -> None:
    """`hash $arg_shop consistent`: every stream of a shop meets on one gateway.

    Then the documented drain: mark that gateway `down` and reload nginx (new
    streams go to the other, open ones stay), SIGTERM it (open streams get
    `event: shutdown`, the process exits 0).
    """
    conf = {"server": {"shutdown_timeout": 3}}
    gws = [await gateway_factory.astart(config=conf) for _ in range(2)]
    port = free_port()
    upstream = [f"127.0.0.1:{gw.port}" for gw in gws]
    n: NginxServer = nginx_factory(nginx_conf(0, port, upstream_servers=upstream), port=port)
    assert "hash $arg_shop consistent;" in n.conf_text

    shops = []
    for _ in range(16):
        mid, shop = unique_merchant("hash")
        postgres_server.add_merchant(mid, shop)
        shops.append((mid, shop))

    def opened_on(gw, shop: str) -> int:
        return gw.log_text().count(f"stream open merchant={shop.split('.')[0]}-id shop={shop} ")

    home: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        for _, shop in shops:
            for _ in range(3):  # three tabs of the same shop
                s = await stack.enter_async_context(open_stream(nginx_url(n, shop)))
                assert s.status == 200
                await s.next_event_of("connected", timeout=5)

        def all_logged() -> list[list[int]] | None:
            c = [[opened_on(gw, shop) for gw in gws] for _, shop in shops]
            return c if all(sum(x) == 3 for x in c) else None

        counts = await wait_for(all_logged, timeout=5, message="(48 stream-open log lines)")
        for (_, shop), per_gw in zip(shops, counts, strict=True):
            assert sorted(per_gw) == [0, 3], (shop, per_gw)  # all three on one gateway
            home[shop] = per_gw.index(3)
        # both gateways serve some merchants (16 shops: all on one has p = 2**-15)
        assert set(home.values()) == {0, 1}, home

    # Drain the gateway of the first shop: `down` + reload.
    mid, shop = shops[0]
    d = home[shop]
    drained = gws[d]
    async with open_stream(nginx_url(n, shop)) as old:
        assert old.status == 200
        await old.next_event_of("connected", timeout=5)
        assert await wait_for(lambda: opened_on(drained, shop) == 4, timeout=5)

        marked = [u + (" down" if i == d else "") for i, u in enumerate(upstream)]
        n.conf_text = nginx_conf(0, port, upstream_servers=marked)
        quits = n.error_log_text().count("gracefully shutting down")
        n.reload()
        # Until the old worker has been told to quit it still accepts (with the
        # old upstream list); from then on only the new one does.
        await wait_for(
            lambda: n.error_log_text().count("gracefully shutting down") > quits,
            timeout=10,
            message="(old nginx worker quitting)",
        )

        async def lands_on_other() -> bool:
            """Open (and close) one stream; True when the other gateway took it."""
            before = [opened_on(gw, shop) for gw in gws]
            async with open_stream(nginx_url(n, shop)) as s:
                assert s.status == 200
                await s.next_event_of("connected", timeout=5)
            after = await wait_for(
                lambda: (a := [opened_on(gw, shop) for gw in gws]) != before and a, timeout=5
            )
            return bool(after[1 - d] > before[1 - d])

        for _ in range(3):
            assert await lands_on_other()
        # the stream opened before the reload is still served by the drained one
        assert await publish(redis_server.url, f"merchant:{mid}:stage", {"stage": "x"}) >= 1
        assert (await old.next_event(timeout=5)).event == "stage"

        drained.send_signal(signal.SIGTERM)
        bye = await old.next_event_of("shutdown", timeout=5)
        assert bye.retry is not None and bye.retry > 0
        await old.wait_closed(timeout=5)
    assert await asyncio.to_thread(drained.wait, 10) == 0

