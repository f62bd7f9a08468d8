"""End to end: request bodies on every path, hostile and stalled, directly, through the
shipped nginx config and with `server.workers: 2`.

* four concurrent 1 MB gzip bombs (1000 MiB inflated) to each endpoint: never
  inflated, `/health/live` p99 under 50 ms meanwhile, under 1 CPU-s for all of it;
* the publish API takes only UTF-8 `application/json` without Content-Encoding
  and without duplicate keys (400/415 otherwise);
* a stalled upload gets 408 `timeout` after `server.body_timeout` and is closed;
* a malformed request's 400 quotes nothing of it; the JSON log stays JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hostile_support import LivenessProbe, session_token, status_of
from publish_probe_support import (
    MODES,
    bomb,
    cpu_seconds,
    p99,
    read_until_closed,
    send_with_body,
    shipped_nginx,
    workers_in,
)
from support import http_json

pytestmark = pytest.mark.timeout(90)

KEY = "probe-publish-key-5e4d3c2b1a"
SECRET = "probe-session-secret-0f1e2d3c4b5a6978"
LEAK = b"Bearer leak-me-9c8b7a"


def _publish_head(path: str, extra: bytes = b"", key: str = KEY) -> bytes:
    return (b"POST " + path.encode() + b"/publish HTTP/1.1\r\nHost: probe\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n" + extra)


async def _bombs(port: int, heads: list[bytes], pid: int, live_port: int) -> None:
    """Four concurrent bombs per head while /health/live is timed; the figures."""
    body = bomb()
    cpu_before = cpu_seconds(pid)
    with LivenessProbe(live_port, interval=0.01) as probe:
        started = time.monotonic()
        statuses = await asyncio.gather(*(
            send_with_body(port, head + b"Content-Encoding: gzip\r\n", body)
            for head in heads for _ in range(4)
        ))
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # enough probes
    cpu = cpu_seconds(pid) - cpu_before
    print(f"\n{len(statuses)} gzip bombs: statuses {sorted(set(map(str, statuses)))}, "
          f"/health/live p99 {p99(probe.samples) * 1000:.1f} ms ({probe.summary()}), "
          f"gateway CPU {cpu:.2f} s")
    assert not [s for s in statuses if s is not None and s >= 500 and s != 503], statuses
    assert not probe.failures, probe.summary()
    assert p99(probe.samples) < 0.05, probe.summary()
    assert cpu < 1.0, f"the gateway spent {cpu:.2f} CPU-s on {len(statuses)} bombs"


async def _probe(port: int, path: str, shop: str, token: str, *, via_nginx: bool,
                 pid: int, live_port: int, body_timeout: float) -> None:
    stream = path.encode() + b"?shop=" + shop.encode()
    heads = [
        b"GET /health HTTP/1.1\r\nHost: probe\r\n",
        b"GET " + stream + b" HTTP/1.1\r\nHost: probe\r\n",
        b"POST " + path.encode() + b"/ticket?shop=" + shop.encode()
        + b" HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer " + token.encode() + b"\r\n",
        _publish_head(path, b"Content-Type: application/json\r\n"),
        _publish_head(path, b"Content-Type: application/json\r\n", key="wrong"),
    ]
    if not via_nginx:  # nginx does not proxy these two
        heads += [b"GET /health/live HTTP/1.1\r\nHost: probe\r\n",
                  b"GET /metrics HTTP/1.1\r\nHost: probe\r\n"]
    await _bombs(port, heads, pid, live_port)

    url = f"http://127.0.0.1:{port}{path}/publish"
    auth = {"Authorization": f"Bearer {KEY}"}
    good = {"merchantId": "probe-m", "event": "stage", "data": "x"}
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({"Content-Type": "application/json"}, json.dumps(good).encode(), 200, ""),
        ({"Content-Type": "application/json; charset=UTF-8"}, json.dumps(good).encode(), 200, ""),
        ({"Content-Type": "text/plain"}, json.dumps(good).encode(), 415, "unsupported_media_type"),
        ({}, json.dumps(good).encode(), 415, "unsupported_media_type"),
        ({"Content-Type": "application/json; charset=utf-16"}, json.dumps(good).encode("utf-16"),
         415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"},
         json.dumps(good).encode(), 415, "unsupported_encoding"),
        ({"Content-Type": "application/json"}, json.dumps(good).encode("utf-16"), 400,
         "invalid_request"),
        ({"Content-Type": "application/json"}, json.dumps(good).encode("utf-32"), 400,
         "invalid_request"),
        ({"Content-Type": "application/json"}, json.dumps(good).encode("utf-16-le"), 400,
         "invalid_request"),
        ({"Content-Type": "application/json"},
         b'{"merchantId": "probe-m", "event": "stage", "data": "x", "data": "y"}', 400,
         "invalid_request"),
        ({"Content-Type": "application/json"},
         b'[{"merchantId": "probe-m", "event": "stage", "data": {"a": 1, "a": 2}}]', 400,
         "invalid_request"),
    ]
    for headers, data, want, code in cases:
        status, _, reply = await http_json(url, "POST", {**auth, **headers}, data=data)
        assert status == want, (headers, data[:40], status, reply)
        if code:
            assert reply["error"] == code, (headers, reply)

    # a malformed request carrying a credential: the 400 quotes none of it
    for raw in (b"GET /health HTTP/1.1\r\nHost: probe\r\nAuthorization: " + LEAK + b"\x01\r\n\r\n",
                b"GET /he\x01alth?token=" + LEAK[7:] + b" HTTP/1.1\r\nHost: probe\r\n\r\n"):
        answer, _ = await read_until_closed(port, raw, timeout=5)
        assert status_of(answer) == 400, answer[:200]
        assert LEAK[7:] not in answer and b"\x01" not in answer, answer

    # a stalled upload: 408 after body_timeout (nginx: its client_body_timeout), closed
    stalled = _publish_head(path, b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    answer, took = await read_until_closed(port, stalled + b'{"merchantId"', timeout=15)
    print(f"stalled upload: {status_of(answer)} after {took:.2f} s")
    assert took < body_timeout + 3, took
    if via_nginx:
        assert status_of(answer) in (408, None), answer[:200]
    else:
        assert status_of(answer) == 408 and b'"timeout"' in answer, answer[:300]


def _check_log(log: str) -> None:
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:2000]
    assert LEAK[7:].decode() not in log and KEY not in log
    lines = [line for line in log.splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, f"log lines that are not JSON: {not_json[:5]}"


@pytest.mark.parametrize("mode", MODES)
async def test_request_bodies_never_inflated_nor_waited_for(
    mode: str, gateway_factory: Any, nginx_factory: Any, merchant: Any
) -> None:
    _, shop = merchant
    gw = await gateway_factory.astart(config={
        "server": {"body_timeout": 1, "workers": workers_in(mode)},
        "auth": {"publish_key": KEY, "session_token_secret": SECRET},
        "logging": {"format": "json"},
    })
    assert gw.pid is not None
    port = gw.port
    if mode == "nginx":
        port = shipped_nginx(nginx_factory, gw.port).port
    await _probe(port, gw.path, shop, session_token(shop, SECRET), via_nginx=mode == "nginx",
                 pid=gw.pid, live_port=gw.port, body_timeout=1)
    assert gw.returncode is None
    _check_log(gw.log_text())
