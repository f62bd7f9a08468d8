"""Redis transports end to end (README.md "Configuration"): rediss:// (TLS, as Upstash
requires), unix:// sockets, and the legacy REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/
REDIS_DB variables.

Each Redis here listens ONLY on the transport under test (``--port 0``), so a
gateway that ignored the scheme, the CA or the legacy variables could not reach
it: /health would stay 503 and no PUBLISH would find a subscriber.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis
from ops_support import get_health, poll
from support import open_stream, publish

from tools.services import HOST, RedisServer, free_port

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _openssl(args: str, cwd: Path) -> None:
    """Run ``openssl ARGS`` (whitespace-separated, no quoting) in ``cwd``."""
    out = subprocess.run(
        ["openssl", *args.split()], cwd=str(cwd), capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"openssl {args} failed:\n{out.stdout}\n{out.stderr}")


_EC = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256) in ``d``: (cert, key)."""
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        f"req -x509 {_EC} -keyout {key.name} -out {crt.name} -days 2"
        f" -subj /CN=gateway-test-{name}"
        " -addext basicConstraints=critical,CA:TRUE"
        " -addext keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    return crt, key


def _make_server_cert(d: Path, ca_crt: Path, ca_key: Path) -> tuple[Path, Path]:
    """A server certificate for IP 127.0.0.1 signed by the CA: (cert, key)."""
    crt, key, csr, ext = d / "server.crt", d / "server.key", d / "server.csr", d / "server.ext"
    _openssl(f"req -new {_EC} -keyout {key.name} -out {csr.name} -subj /CN={HOST}", cwd=d)
    ext.write_text(
        f"subjectAltName=IP:{HOST}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        f"x509 -req -in {csr.name} -CA {ca_crt} -CAkey {ca_key}"
        f" -set_serial {secrets.randbits(63)} -days 2 -out {crt.name} -extfile {ext.name}",
        cwd=d,
    )
    return crt, key


class _TransportRedis(RedisServer):
    """A RedisServer with no plain TCP listener (``--port 0``); readiness is
    checked with redis-py over the transport under test (``client_kwargs``)."""

    def __init__(
        self,
        *,
        password: str | None,
        extra_args: list[str],
        client_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(password=password, extra_args=extra_args)
        self.client_kwargs = {"password": password, **client_kwargs}

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--port") + 1] = "0"
        return argv

    def client(self) -> redis.Redis:
        return redis.Redis(socket_timeout=2, socket_connect_timeout=2, **self.client_kwargs)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """The services' one readiness wait, its check a PING over the transport."""

        def pong() -> bool:
            with self.client() as c:
                return bool(c.ping())

        self.await_ready(pong, timeout, interval=0.03, errors=(redis.RedisError,))


def _channel(mid: str, event: str = "progress") -> str:
    return f"merchant:{mid}:{event}"


async def _health_ok(gw: Any) -> dict[str, Any]:
    (_, body, _), _ = await poll(
        lambda: get_health(gw), lambda r: r[0] == 200, 15, 0.1, "/health 200"
    )
    assert body["status"] == "ok", body
    for dep in ("redis", "postgres", "delivery"):
        assert body[dep]["status"] == "ok", body
    return body


async def _stream_receives_publish(gw: Any, shop: str, mid: str, redis_url: str) -> None:
    payload = json.dumps({"jobId": secrets.token_hex(4), "pct": 7})
    async with open_stream(gw.stream_url(shop)) as s:
        assert s.status == 200, await s.resp.text()
        assert (await s.next_event(timeout=10)).event == "connected"
        # exactly one receiver: the gateway's subscription on THIS server
        assert await publish(redis_url, _channel(mid), payload) == 1
        ev = await s.next_event(timeout=5)
        assert (ev.event, ev.data) == ("progress", payload), ev


def _assert_secret_absent(text: str, password: str, where: str) -> None:
    for form in {password, quote(password, safe="")}:
        if form in text:
            # report where without echoing the secret into the test output
            lines = [i + 1 for i, ln in enumerate(text.splitlines()) if form in ln]
            pytest.fail(f"the Redis password leaked into {where} (lines {lines})")


def _redis_source_line(log: str) -> str:
    lines = [ln for ln in log.splitlines() if "redis source:" in ln]
    assert len(lines) == 1, f"expected one 'redis source:' line, log:\n{log[-3000:]}"
    return lines[0]


# ----------------------------------------------------------------------------
# rediss://
# ----------------------------------------------------------------------------


@dataclass
class TLSRedis:
    server: _TransportRedis
    port: int
    password: str
    ca: Path
    wrong_ca: Path

    def url(self, ca: Path) -> str:
        return f"rediss://:{self.password}@{HOST}:{self.port}/0?ssl_ca_certs={ca}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    d = tmp_path_factory.mktemp("tls")
    ca_crt, ca_key = _make_ca(d, "ca")
    wrong_ca, _ = _make_ca(d, "wrong-ca")
    crt, key = _make_server_cert(d, ca_crt, ca_key)
    password = "tls-" + secrets.token_hex(12)
    port = free_port()
    server = _TransportRedis(
        password=password,
        extra_args=[
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(crt),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca_crt),
            "--tls-auth-clients",
            "no",
        ],
        client_kwargs={"host": HOST, "port": port, "ssl": True, "ssl_ca_certs": str(ca_crt)},
    )
    server.start()
    try:
        # the TLS port really is TLS-only: a plain client cannot talk to it
        with (
            pytest.raises((redis.ConnectionError, redis.TimeoutError)),
            redis.Redis(host=HOST, port=port, password=password, socket_timeout=1) as plain,
        ):
            plain.ping()
        yield TLSRedis(server, port, password, ca_crt, wrong_ca)
    finally:
        server.stop()


async def test_rediss_url_with_ca(tls_redis, merchant, gateway_factory):
    mid, shop = merchant
    url = tls_redis.url(tls_redis.ca)
    gw = await gateway_factory.astart(env={"REDIS_URL": url})
    body = await _health_ok(gw)
    await _stream_receives_publish(gw, shop, mid, url)

    log = gw.log_text()
    line = _redis_source_line(log)
    assert "REDIS_URL" in line and "rediss://" in line and f":{tls_redis.port}" in line, line
    _assert_secret_absent(log, tls_redis.password, "the gateway log")
    _assert_secret_absent(json.dumps(body), tls_redis.password, "/health")


async def test_rediss_wrong_ca_fails_closed(tls_redis, merchant, gateway_factory):
    _, shop = merchant
    gw = await gateway_factory.astart(env={"REDIS_URL": tls_redis.url(tls_redis.wrong_ca)})
    (status, body, _), _ = await poll(
        lambda: get_health(gw),
        lambda r: r[0] == 503 and r[1]["postgres"]["status"] == "ok",
        10,
        0.1,
        "/health 503 with postgres ok",
    )
    assert body["status"] == "fail" and body["redis"]["status"] == "fail", body
    assert body["postgres"]["status"] == "ok", body

    # the log says why (certificate verification), without the password
    await poll(
        lambda: _log(gw),
        lambda t: re.search(r"certificate verify failed", t, re.I),
        10,
        0.1,
        "a certificate error in the gateway log",
    )
    # a stream is refused as unavailable, not hung or crashed
    async with open_stream(gw.stream_url(shop)) as s:
        assert s.status == 503, s.status
    # still failing and still running a while later (the supervisor keeps retrying)
    await asyncio.sleep(1.0)
    assert gw.returncode is None, gw.log_text()[-3000:]
    status, body, _ = await get_health(gw)
    assert status == 503 and body["redis"]["status"] == "fail", body
    status, _, _ = await get_health(gw, "/health/live")
    assert status == 200

    log = gw.log_text()
    _assert_secret_absent(log, tls_redis.password, "the gateway log")
    _assert_secret_absent(json.dumps(body), tls_redis.password, "/health")


async def _log(gw: Any) -> str:
    return str(gw.log_text())


# ----------------------------------------------------------------------------
# unix://
# ----------------------------------------------------------------------------


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    """A Redis reachable only on ``tmp_path/redis.sock``: the socket path.

    Requested before ``gateway_factory`` so it outlives the gateway."""
    sock = tmp_path / "redis.sock"
    assert len(str(sock)) < 100, f"socket path too long for AF_UNIX: {sock}"
    server = _TransportRedis(
        password=None,
        extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"],
        client_kwargs={"unix_socket_path": str(sock)},
    )
    server.start()
    try:
        yield sock
    finally:
        server.stop()


async def test_unix_socket_url(unix_redis, merchant, gateway_factory):
    mid, shop = merchant
    url = f"unix://{unix_redis}?db=0"
    gw = await gateway_factory.astart(env={"REDIS_URL": url})
    await _health_ok(gw)
    await _stream_receives_publish(gw, shop, mid, url)
    line = _redis_source_line(gw.log_text())
    # (the gateway prints unix:///path as the equivalent unix:/path)
    assert "REDIS_URL (unix:" in line and f"{unix_redis}" in line, line


# ----------------------------------------------------------------------------
# legacy REDIS_HOST / REDIS_PORT / REDIS_PASSWORD / REDIS_DB
# ----------------------------------------------------------------------------


async def test_legacy_redis_variables(redis_factory, merchant, gateway_factory):
    mid, shop = merchant
    # URL-special characters: the gateway must quote them into its URL
    password = f"p@ss:w/rd#{secrets.token_hex(8)}%?"
    server = redis_factory(password=password)
    gw = await gateway_factory.astart(
        config={"redis": {"url": ""}},
        env={
            "REDIS_URL": None,
            "REDIS_HOST": HOST,
            "REDIS_PORT": str(server.port),
            "REDIS_PASSWORD": password,
            "REDIS_DB": "2",
        },
    )
    body = await _health_ok(gw)

    log = gw.log_text()
    line = _redis_source_line(log)
    assert "redis source: REDIS_HOST/REDIS_PORT/REDIS_PASSWORD/REDIS_DB" in line, line
    assert f"{HOST}:{server.port}/2" in line, line

    # the gateway's connections selected db 2 (ours is on db 0)
    client = aioredis.Redis(host=HOST, port=server.port, password=password)
    try:
        clients = await client.client_list()
        assert any(c.get("db") == "2" for c in clients), clients
        url_for_publish = f"redis://:{quote(password, safe='')}@{HOST}:{server.port}/0"
    finally:
        await client.aclose()
    await _stream_receives_publish(gw, shop, mid, url_for_publish)

    log = gw.log_text()
    _assert_secret_absent(log, password, "the gateway log")
    _assert_secret_absent(json.dumps(body), password, "/health")
