"""The shipped TLS + HTTP/2 edge (config/nginx-tls.conf) with real nginx and Chromium.

The shipped file is used as it is, except for its documented placeholders
(listen directives, upstream address, certificate paths, access-log path),
replaced by text substitution (``tools.edge``, which ``make run`` can use too).
The certificate is a throwaway self-signed one
(``tools.services.self_signed_cert``); Chromium is told to accept it with
``--ignore-certificate-errors`` (test-only). Everything runs on 127.0.0.1.

Why the edge exists: over HTTP/1.1 Chromium opens at most 6 connections per
origin, so a 7th EventSource stalls; over HTTP/2 all share one connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_support import chromium_page
from support import publish, wait_for
from test_nginx_e2e import nginx_conf as plain_nginx_conf

from tools.edge import TlsEdge, nginx_tls_conf, start_tls_edge
from tools.services import NginxServer, free_port, self_signed_cert

STREAM_PATH = "/api/realtime/events"
STREAMS = 10


@pytest.fixture
def tls_cert(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A throwaway self-signed certificate for 127.0.0.1/localhost: (cert, key)."""
    yield self_signed_cert(tmp_path / "tls")


def start_tls_nginx(nginx_factory, gateway_port: int, cert_key: tuple[Path, Path]) -> Any:
    """nginx with the TLS snippet: (server, https port, http port)."""
    https_port, http_port = free_port(), free_port()
    conf = nginx_tls_conf([f"127.0.0.1:{gateway_port}"], https_port, http_port, *cert_key)
    n: NginxServer = nginx_factory(conf, port=https_port)
    return n, https_port, http_port


def handshake(port: int, cafile: Path | None, **settings: Any) -> tuple[str, str, str | None]:
    """One TLS handshake with 127.0.0.1:port: (version, cipher, ALPN protocol)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if "ciphers" in settings:
        ctx.set_ciphers(settings["ciphers"])
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        for attr in ("minimum_version", "maximum_version"):
            if attr in settings:
                setattr(ctx, attr, settings[attr])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0], tls.selected_alpn_protocol()


async def test_tls_edge_protocols_ciphers_and_redirect(gateway_factory) -> None:
    gw = await gateway_factory.astart()
    edge = await asyncio.to_thread(start_tls_edge, gw.port)  # its own throwaway cert
    try:
        await check_tls_edge(gw, edge)
    finally:
        edge.stop()
    assert not edge.cert.exists() and not edge.nginx.running


async def check_tls_edge(gw: Any, edge: TlsEdge) -> None:
    https_port, http_port, cert = edge.https_port, edge.http_port, edge.cert

    # TLS 1.3 and 1.2 with a certificate that verifies against our CA; ALPN h2.
    v13 = await asyncio.to_thread(handshake, https_port, cert)
    assert v13[0] == "TLSv1.3" and v13[2] == "h2", v13
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    v12 = await asyncio.to_thread(handshake, https_port, cert, **tls12)
    assert v12[0] == "TLSv1.2" and v12[2] == "h2", v12
    assert v12[1].startswith("ECDHE-") and ("GCM" in v12[1] or "CHACHA20" in v12[1]), v12

    # Refused: TLS 1.0/1.1 (the client lowers its own floor to offer them), and
    # TLS 1.2 with only weak ciphers (static RSA key exchange, CBC, 3DES).
    old = {
        "minimum_version": ssl.TLSVersion.TLSv1,
        "maximum_version": ssl.TLSVersion.TLSv1_1,
        "ciphers": "ALL:@SECLEVEL=0",
    }
    weak = {**tls12, "ciphers": "AES128-SHA:AES256-SHA:DES-CBC3-SHA:ECDHE-ECDSA-AES128-SHA"}
    for settings in (old, weak):
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.to_thread(handshake, https_port, None, **settings)
        assert "ALERT" in str(refused.value).upper() or "VERSION" in str(refused.value).upper()

    # HTTPS answers; plain HTTP answers only with a redirect to https.
    ctx = ssl.create_default_context(cafile=str(cert))
    target = f"{STREAM_PATH}?shop=a.myshopify.com"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{https_port}/health", ssl=ctx) as r:
            assert r.status == 200
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        url = f"http://127.0.0.1:{http_port}{target}"
        async with session.get(url, allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == f"https://127.0.0.1{target}"
        # ...except ACME HTTP-01 challenges, served from the webroot certbot writes to
        challenge = edge.nginx.prefix / "acme" / ".well-known" / "acme-challenge" / "tok3n"
        challenge.parent.mkdir(parents=True, exist_ok=True)
        challenge.write_text("tok3n.key-authorization")
        acme = f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/tok3n"
        async with session.get(acme, allow_redirects=False) as r:
            assert r.status == 200 and await r.text() == "tok3n.key-authorization"
    assert "stream open" not in gw.log_text()  # nothing reached the gateway in clear text
    assert edge.nginx.running


OPEN_STREAMS_JS = """({url, n}) => {
    window.edge = {opened: [], got: [], errors: 0};
    for (let i = 0; i < n; i++) {
        const es = new EventSource(url);
        es.addEventListener('connected', () => window.edge.opened.push(i));
        es.addEventListener('progress', () => window.edge.got.push(i));
        es.onerror = () => { window.edge.errors++; };
    }
    return performance.getEntriesByType('navigation')[0].nextHopProtocol;
}"""


async def ten_streams_in_chromium(
    page_url: str, shop: str, mid: str, redis_url: str, expect: int
) -> dict[str, Any]:
    """Open STREAMS EventSources in one page, publish one event: what the page saw.

    Waits until ``expect`` streams are open and have the event, then another
    2 s to be sure no more arrive (a bound, not synchronisation).
    """
    async with chromium_page("--ignore-certificate-errors") as (page, _):
        response = await page.goto(page_url)
        assert response is not None and response.status == 200
        url = f"{STREAM_PATH}?shop={shop}"  # same origin as the page
        protocol = await page.evaluate(OPEN_STREAMS_JS, {"url": url, "n": STREAMS})

        async def count(key: str) -> int:
            return int(await page.evaluate(f"window.edge.{key}.length"))

        async def reached(key: str) -> bool:
            return await count(key) >= expect

        await wait_for(lambda: reached("opened"), timeout=10, message=f"({expect} open)")
        assert await publish(redis_url, f"merchant:{mid}:progress", {"jobId": "h2"}) == 1
        t0 = time.monotonic()
        await wait_for(lambda: reached("got"), timeout=5, message=f"({expect} got it)")
        latency = time.monotonic() - t0
        await asyncio.sleep(2)  # the absence check: nothing more arrives
        edge: dict[str, Any] = await page.evaluate("window.edge")
        return {**edge, "protocol": protocol, "latency": latency}


async def test_chromium_gets_ten_streams_over_http2(
    gateway_factory, nginx_factory, redis_server, merchant, tls_cert
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart()
    n, https_port, _ = start_tls_nginx(nginx_factory, gw.port, tls_cert)

    seen = await ten_streams_in_chromium(
        f"https://127.0.0.1:{https_port}/health", shop, mid, redis_server.url, STREAMS
    )
    assert seen["protocol"] == "h2", seen
    assert sorted(seen["opened"]) == list(range(STREAMS)), seen
    assert sorted(seen["got"]) == list(range(STREAMS)), seen
    assert seen["latency"] < 2, seen

    # nginx logged each stream as an HTTP/2 request (once the page closed them)
    access_log = n.prefix / "logs" / "gateway_access.log"

    def h2_stream_lines() -> int:
        text = access_log.read_text() if access_log.exists() else ""
        return text.count(f'"GET {STREAM_PATH} HTTP/2.0" 200')

    await wait_for(lambda: h2_stream_lines() >= STREAMS, timeout=5, message="(access log)")
    assert h2_stream_lines() == STREAMS


async def test_chromium_stalls_the_seventh_stream_over_http1(
    gateway_factory, nginx_factory, redis_server, merchant
) -> None:
    """The same page through the plain config/nginx.conf: 6 streams, 4 waiting."""
    mid, shop = merchant
    gw = await gateway_factory.astart()
    port = free_port()
    nginx_factory(plain_nginx_conf(gw.port, port), port=port)

    seen = await ten_streams_in_chromium(
        f"http://127.0.0.1:{port}/health", shop, mid, redis_server.url, 6
    )
    assert seen["protocol"] == "http/1.1", seen
    assert len(seen["opened"]) == 6, seen  # the 7th..10th never got a connection
    assert len(seen["got"]) == 6, seen
    assert sorted(seen["got"]) == sorted(seen["opened"]), seen
