"""The public edge refuses `POST …/publish` from addresses it does not allow.

config/nginx.conf and config/nginx-tls.conf (as shipped, only their documented
placeholders replaced) allow the publish location to loopback only
(`allow 127.0.0.1; allow ::1; deny all;`). Here the "public" client is
127.0.0.2: a loopback address too, so the test runs on this machine alone, but
not one the files allow, which is all nginx's `allow`/`deny` looks at
($remote_addr), exactly as for an address on the Internet. From it the stream
and /health answer 200 while publish gets nginx's own 403 and never reaches
the gateway (the publish from 127.0.0.1 that follows is offset 1 of the
merchant's history); from 127.0.0.1 publishing works.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import open_stream
from test_nginx_e2e import start_nginx

from gateway.durable.ids import DurableId
from tools.edge import start_tls_edge

KEY = "edge-publish-key-7c6b5a4d3e2f1a0b"
PUBLIC = "127.0.0.2"  # not allowed by the shipped files
BACKEND = "127.0.0.1"  # allowed: a backend on the nginx host


@contextlib.asynccontextmanager
async def session_from(source: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connections leave from ``source`` (no certificate check:
    the TLS edge's certificate is a throwaway self-signed one)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True, ssl=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        yield session


async def post_publish(base: str, path: str, source: str, mid: str) -> tuple[int, str]:
    async with session_from(source) as session, session.post(
        f"{base}{path}/publish",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"merchantId": mid, "event": "progress", "data": {"jobId": "edge", "percent": 1}},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as resp:
        return resp.status, await resp.text()


async def get_status(base: str, path: str, source: str) -> int:
    async with session_from(source) as session, session.get(
        f"{base}{path}", timeout=aiohttp.ClientTimeout(total=10)
    ) as resp:
        return resp.status


@pytest.mark.parametrize("edge", ["nginx.conf", "nginx-tls.conf"])
async def test_public_edge_refuses_publish_from_an_address_it_does_not_allow(
    edge: str, gateway_factory: Any, nginx_factory: Any, merchant: tuple[str, str]
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart(config={"auth": {"publish_key": KEY}})
    stop = None
    if edge == "nginx.conf":
        base = f"http://127.0.0.1:{start_nginx(nginx_factory, gw.port).port}"
    else:
        tls = start_tls_edge(gateway_port=gw.port)
        base, stop = tls.https_url, tls.stop
    try:
        async with session_from(PUBLIC) as public, open_stream(
            f"{base}{gw.path}?shop={shop}", session=public
        ) as stream:
            # the public side of the edge works from PUBLIC ...
            assert stream.status == 200
            assert (await stream.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
            assert await get_status(base, "/health", PUBLIC) == 200
            # ... publish does not: nginx answers, not the gateway (its refusals are JSON)
            status, body = await post_publish(base, gw.path, PUBLIC, mid)
            assert status == 403, body
            assert "<title>403 Forbidden</title>" in body and "error" not in body, body
            # from an allowed address it does; offset 1: the refused one never arrived
            status, body = await post_publish(base, gw.path, BACKEND, mid)
            assert status == 200, body
            published = DurableId.parse(json.loads(body)["id"])
            assert published is not None and published.offset == 1, body
            got = await stream.next_event_of("progress", timeout=10)
            assert DurableId.parse(got.id) == published
    finally:
        if stop is not None:
            stop()
