"""End to end: hostile input on both sides of the gateway, bounded and on loopback.

* HTTP: a few thousand malformed, oversized, oddly encoded and half-sent requests
  (50 sockets at a time, a timeout on each) while an honest stream stays open and
  ``/health/live`` is timed from another thread.
* Redis: payloads that try to inject SSE fields or frames, NUL bytes, invalid UTF-8,
  1 MiB payloads and JSON nested 100,000 deep on a coalesced event type.

Malformed requests get 400 or a plain close; nothing gets a 5xx but 503; the log
holds no traceback and no credential; the honest stream receives exactly what was
published, one event per message.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from delivery_support import LaggingClient, Publisher, stalled_stream
from hostile_support import (
    LivenessProbe,
    bounded_gather,
    exchange,
    leaked_fragments,
    raw_json,
    session_token,
    status_of,
    ticket_for,
)
from ops_support import get_metrics, metric
from support import Event, http_json, open_stream, publish

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
EVENTS = ("progress", "stage", "completion", "error")
SECRET = "hostile-suite-secret-9f8e7d6c5b4a"
HOST = b"\r\nHost: hostile\r\n"
FLOOD_LIMIT_S = 35  # a healthy gateway answers the whole flood in a few seconds


@dataclass
class Case:
    kind: str  # "malformed": 400 or a close; "odd": any answer but a 5xx other than 503
    pieces: list[bytes]
    linger: float = 0.0  # "half": stop mid-request and dawdle this long (read nothing)


def _requests(
    path: str, shop: str, token: str, ticket: str, n: int, seed: int = 1234
) -> list[Case]:
    """``n`` hostile requests, deterministic for a seed; some carry the real credentials."""
    rng = random.Random(seed)
    p = path.encode()
    s = shop.encode()
    t = token.encode()
    tk = ticket.encode()
    stream = p + b"?shop=" + s

    def line(target: bytes, method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
        return method + b" " + target + b" " + version + HOST

    malformed: list[Callable[[], bytes]] = [
        lambda: rng.choice([b"G\x00T", b"GE\x01T", b"\xff\xfe", b"GET\x7f", b"\x16\x03\x01"])
        + b" " + stream + b" HTTP/1.1" + HOST + b"\r\n",
        lambda: line(stream, version=rng.choice([
            b"HTTP/1.1.1", b"HTTP/", b"HTTP/x.y", b"HTTPS/1.1", b"HTTP/1.1x", b"HTTP/9.9",
        ])) + b"\r\n",
        lambda: line(stream) + b"X-Folded: a\r\n" + rng.choice([b" b", b"\tb"]) + b"\r\n\r\n",
        lambda: line(p + b"?shop=" + s[:3] + b"\x00" + s[3:]) + b"\r\n",
        lambda: line(stream) + b"X-Nul: a\x00b\r\n\r\n",
        lambda: line(stream) + b"X-\x00Name: v\r\n\r\n",
        lambda: line(stream) + rng.choice([b"X-Big", b"Cookie", b"Last-Event-ID"]) + b": "
        + b"a" * 65536 + b"\r\n\r\n",
        lambda: line(stream) + b"".join(b"X-%d: %s\r\n" % (i, b"h" * 1000) for i in range(200))
        + b"\r\n",
        lambda: line(p + b"?shop=\xff\xfe" + rng.randbytes(8).replace(b" ", b"")) + b"\r\n",
        lambda: line(stream + b"&" + b"a" * 8000 + b"\x01") + b"\r\n",
        lambda: line(stream + b"&%74oken=" + t + b"\x01") + b"\r\n",
        lambda: line(stream + b"&%74icket=" + tk + b"\x01") + b"\r\n",
        lambda: line(stream, b"POST") + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        lambda: line(stream, b"POST") + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        lambda: line(stream, b"POST") + b"Content-Length: -1\r\n\r\n",
        lambda: line(p + b"/ticket?shop=" + s, b"POST")
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        lambda: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        lambda: b"GET " + stream + b" HTTP/1.1\nHost: x\n\n",
        lambda: b"GET /health/live HTTP/1.1\rHost: x\r\n\r\n",
        lambda: b"X" + rng.randbytes(rng.randint(1, 2000)) + b"\r\n\r\n",
    ]
    odd: list[Callable[[], bytes]] = [
        lambda: line(p + b"?shop=" + rng.choice([
            b"%zz", b"%", b"%%", b"%0", b"%c3%28", b"%ff%fe", b"%00", b"%u0041", b"%2e%2e%2f",
        ])) + b"\r\n",
        lambda: line(stream + b"&shop=" + rng.choice([s, b"other.myshopify.com", b"", b"%ff"]))
        + b"\r\n",
        lambda: line(stream + b"&token=" + t) + b"Last-Event-ID: "
        + rng.choice([b"-----", b"9" * 8000, "1-\u0661\u0662".encode(), b"x-\xff"]) + b"\r\n\r\n",
        lambda: line(stream + b"&token=" + t, version=b"HTTP/1.0") + b"\r\n",
        lambda: line(rng.choice([b"/health", b"/health/live", b"/metrics"]), version=b"HTTP/1.0")
        + b"\r\n",
        lambda: line(stream, rng.choice([b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]))
        + b"\r\n",
        lambda: line(b"http://evil.example" + stream) + b"\r\n",
        lambda: line(rng.choice([b"*", b"/../../etc/passwd", b"/api%2Frealtime%2Fevents",
                                 b"/demo/..%2f..%2fgateway%2fconfig.py"]),
                     rng.choice([b"GET", b"OPTIONS"])) + b"\r\n",
        lambda: line(stream + rng.choice([b"&token=garbage", b"&token=eyJ.", b"&ticket=x.y.z",
                                          b"&%74oken=" + t, b"&token=" + t[:-3],
                                          b"&ticket=" + tk, b"&t%69cket=" + tk])) + b"\r\n",
        lambda: line(stream) + rng.choice([b"Authorization: Bearer " + t[::-1],
                                           b"Authorization: Basic Zm9vOmJhcg==",
                                           b"Authorization: Bearer"]) + b"\r\n\r\n",
        lambda: line(stream + b"&token=" + t) + rng.choice([
            b"Origin: null", b"Origin: \xff\xfe", b"X-Forwarded-For: \xff, ::::, 999.1.1.1",
            b"Accept-Encoding: gzip;q=\xff", b"Upgrade: websocket\r\nConnection: Upgrade",
            b"Accept: */*;q=NaN",
        ]) + b"\r\n\r\n",
        lambda: line(stream + b"&" + b"a=1&" * 1500) + b"\r\n",
        lambda: line(p + b"/ticket?shop=" + s, b"POST")
        + b"Authorization: Bearer " + t
        + b"\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n{}\n",
    ]
    half: list[Callable[[], list[bytes]]] = [
        lambda: [b"GET " + stream[: rng.randint(1, len(stream))]],
        lambda: [line(stream + b"&token=" + t)],
        lambda: [line(p + b"/ticket?shop=" + s, b"POST") + b"Content-Length: 100\r\n\r\n{\"a\""],
        lambda: [line(stream, b"POST") + b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc"],
        lambda: [b"GET /health/live HT", b"TP/1.1\r\nHo"],
        lambda: [b"G"],
    ]
    cases: list[Case] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.5:
            cases.append(Case("malformed", [rng.choice(malformed)()]))
        elif roll < 0.9:
            cases.append(Case("odd", [rng.choice(odd)()]))
        else:
            cases.append(Case("half", rng.choice(half)(), linger=rng.uniform(0.05, 0.4)))
    return cases


async def _send(port: int, case: Case) -> int | None:
    if case.kind == "half":
        await exchange(port, case.pieces, linger=case.linger, read=False)
        return None
    return status_of(await exchange(port, case.pieces, timeout=2))


async def test_hostile_requests_get_400_and_leave_the_gateway_serving(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    gw = gateway_factory.start(config={"auth": {"session_token_secret": SECRET}})
    mid, shop = merchant
    token = session_token(shop, SECRET)
    status, body = await ticket_for(gw, shop, token)
    assert status == 200, (status, body)
    ticket = body["ticket"]
    cases = _requests(gw.path, shop, token, ticket, n=2500)
    async with open_stream(gw.stream_url(shop, token=token)) as honest:
        assert honest.status == 200
        await honest.next_event_of("connected")
        started = time.monotonic()
        with LivenessProbe(gw.port) as probe:
            try:
                jobs = (partial(_send, gw.port, c) for c in cases)
                statuses = await asyncio.wait_for(bounded_gather(jobs, 50), FLOOD_LIMIT_S)
            except TimeoutError:
                pytest.fail(f"{len(cases)} hostile requests took over {FLOOD_LIMIT_S} s; "
                            f"/health/live meanwhile: {probe.summary()}")
        flood_s = time.monotonic() - started
        async with Publisher(redis_server.url, mid) as pub:
            assert await pub.send("stage", {"after": "flood"}) == 1
        after = await honest.next_event_of("stage", timeout=10)
        assert after.json() == {"after": "flood"}
        seen = [after, *honest.pending_events()]
    summary: dict[str, Counter[int | None]] = {}
    for case, status in zip(cases, statuses, strict=True):
        summary.setdefault(case.kind, Counter())[status] += 1
    print(f"\n{len(cases)} hostile requests in {flood_s:.1f} s: "
          + "; ".join(f"{k} {dict(v)}" for k, v in summary.items()))
    print(f"/health/live during the flood: {probe.summary()}")

    server_errors = [(c.pieces[0][:80], s) for c, s in zip(cases, statuses, strict=True)
                     if s is not None and s >= 500 and s != 503]
    assert not server_errors, f"5xx answers: {server_errors[:5]}"
    not_400 = [(c.pieces[0][:80], s) for c, s in zip(cases, statuses, strict=True)
               if c.kind == "malformed" and s not in (400, None)]
    assert not not_400, f"malformed requests must get 400 or a close: {not_400[:5]}"
    assert probe.median() < 0.1, f"/health/live was slow during the flood: {probe.summary()}"
    assert all(e.event in {*EVENTS, "connected", "resync"} for e in seen), seen
    assert gw.returncode is None
    log = gw.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:2000]
    assert token not in log
    assert leaked_fragments(log, token.rsplit(".", 1)[1]) == [], "JWT signature in the log"
    assert leaked_fragments(log, ticket.rsplit(".", 1)[-1]) == [], "ticket in the log"
    assert SECRET not in log


# -- Redis side ---------------------------------------------------------------------------

DEEP = 100_000
HOSTILE_PAYLOADS: list[tuple[str, str | bytes]] = [
    ("progress", "a\r\nevent: x\r\n\r\ndata: y"),
    ("stage", "a\revent: x\r\rdata: y"),
    ("completion", "a\nevent: x\n\ndata: y"),
    ("error", "data: x\n\nid: 9"),
    ("stage", "\n\nretry: 1\n\nevent: resync\ndata: {}\n\n"),
    ("stage", ": comment\nid: 99999999999-1\n"),
    ("progress", "nul\x00byte\x00"),
    ("stage", "\x00\r\n\x00"),
    ("stage", b"\xff\xfe\xc3(invalid utf-8\x80"),
    ("stage", "\ufeffdata: bom"),
    ("stage", "line\u2028sep\u2029para\x85nel\x0bvt\x0cff"),
    ("stage", ""),
    ("stage", "\r\n"),
    ("error", '{"jobId": "j\\r\\nevent: x", "message": "\\n\\ndata: y"}'),
    ("stage", "x" * MiB),
    ("stage", "line\r\n" * (MiB // 6)),
    ("progress", "[" * DEEP),
    ("progress", '{"jobId": "deep", "v": ' + "[" * DEEP + "]" * DEEP + "}"),
    ("progress", '{"jobId": ' * DEEP),
    ("completion", '{"jobId": "deep"}'),
    ("progress", '{"jobId": "q", "n": 1}'),  # the lagging stream coalesces these two:
    ("progress", '{"jobId": "q", "n": 2}'),  # proof that it was queueing meanwhile
]
# channels the gateway must never turn into a stream event
FOREIGN = ("connected", "resync", "shutdown", "progress\r\nevent: x", "progress ")


def _expected(payload: str | bytes) -> str | None:
    """What the browser rebuilds: the payload with CR and CRLF as LF (None: not text)."""
    if isinstance(payload, bytes):
        return None
    return payload.replace("\r\n", "\n").replace("\r", "\n")


def _kernel_buffer_bytes() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as fh:
        wmem_max = int(fh.read().split()[2])
    return 2 * wmem_max + 2 * MiB


async def test_hostile_payloads_never_add_fields_or_frames(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    # a budget that holds the whole burst: the lagging stream must queue, not be cut
    gw = gateway_factory.start(config={"sse": {"max_queue": 100_000, "max_queue_bytes": 64 * MiB}})
    mid, shop = merchant
    target = gw.stream_url(shop)[len(gw.base_url) :]
    lagging = await LaggingClient("127.0.0.1", gw.port, target).connect()
    # enough 1 MiB stages to fill the lagging client's socket buffers: then it queues
    # (and coalesces the deep progress payloads) instead of writing straight through
    fill = _kernel_buffer_bytes() // MiB + 2
    filler = [("stage", f"filler-{i}-" + "f" * MiB) for i in range(fill)]
    marker = ("stage", "after-hostile")
    published = [*filler, *HOSTILE_PAYLOADS, marker]
    try:
        async with open_stream(gw.stream_url(shop)) as honest:
            await honest.next_event_of("connected")
            async with Publisher(redis_server.url, mid) as pub:
                for event, payload in published[:-1]:
                    assert await pub.send(event, payload) == 1, (event, payload[:40])
                for name in FOREIGN:  # before the marker: a leak would show up before it
                    await pub.client.publish(f"merchant:{mid}:{name}", "data: injected")
                    await pub.client.publish(f"merchant:{mid}-other:stage", "wrong merchant")
                assert await pub.send(*marker) == 1
            got: list[Event] = []
            deadline = time.monotonic() + 30
            while not got or got[-1].data != marker[1]:
                got.append(await honest.next_event(timeout=max(0.1, deadline - time.monotonic())))
            got += honest.pending_events()
        names = [e.event for e in got]
        assert set(names) <= set(EVENTS), f"foreign events: {Counter(names)}"
        assert len(got) == len(published), f"{len(published)} published, {len(got)} received"
        for (event, payload), ev in zip(published, got, strict=True):
            assert ev.event == event
            assert {name for name, _ in ev.fields} <= {"id", "event", "data"}, ev.fields[:5]
            assert [n for n, _ in ev.fields].count("event") == 1, ev.fields[:5]
            expected = _expected(payload)
            if expected is None:
                assert "invalid utf-8" in ev.data
            else:
                assert ev.data == expected, f"{event} {payload[:40]!r} -> {ev.data[:60]!r}"
        ids = [e.id for e in got]
        assert None not in ids and len(set(ids)) == len(ids), "every event has its own id"
        samples = await get_metrics(gw)
        assert metric(samples, "gateway_redis_reconnects_total") == 0, "the reader died"
        assert metric(samples, "gateway_events_coalesced_total") >= 1, (
            "the lagging stream never queued: the payloads did not reach coalescing"
        )
        assert gw.returncode is None
        assert "Traceback" not in gw.log_text()
    finally:
        await lagging.close()


# -- credentials that are not UTF-8 ---------------------------------------------------------

PUBLISH_KEY = "hostile-publish-key-0a1b2c3d4e5f"


def _undecodable_credentials(path: str, shop: str, token: str) -> list[bytes]:
    """Requests whose token, ticket or key is not UTF-8 (raw bytes or percent-encoded)."""
    p, s, t = path.encode(), shop.encode(), token.encode()
    stream = b"GET " + p + b"?shop=" + s
    ticket = b"POST " + p + b"/ticket?shop=" + s + b" HTTP/1.1" + HOST
    publish = b"POST " + p + b"/publish HTTP/1.1" + HOST
    head, _, rest = t.partition(b".")
    return [
        stream + b" HTTP/1.1" + HOST + b"Authorization: Bearer \xff\xfe",
        stream + b" HTTP/1.1" + HOST + b"Authorization: Bearer " + head + b".\xc3(" + rest,
        stream + b" HTTP/1.1" + HOST + b"Authorization: Bearer " + t + b"\x80",
        stream + b" HTTP/1.1" + HOST + b"Authorization: bearer \xed\xa0\x80",
        stream + b" HTTP/1.1" + HOST + b"Authorization: \xff\xfe \xff",
        stream + b"&token=%FF%FE HTTP/1.1" + HOST,
        stream + b"&ticket=%FF%FE HTTP/1.1" + HOST,
        stream + b"&token=" + head + b"%FF." + rest + b" HTTP/1.1" + HOST,
        stream + b"&ticket=" + t + b"%C3%28 HTTP/1.1" + HOST,
        ticket + b"Authorization: Bearer \xff\xfe",
        ticket + b"Authorization: Bearer " + t + b"\xff",
        publish + b"Authorization: Bearer \xff\xfe",
        publish + b"Authorization: Bearer " + PUBLISH_KEY.encode() + b"\xff",
        publish + b"Authorization: Bearer \xe9" + PUBLISH_KEY.encode()[1:],
    ]


async def test_undecodable_credentials_get_401_not_500(
    gateway_factory: Any, merchant: Any
) -> None:
    gw = gateway_factory.start(
        config={"auth": {"session_token_secret": SECRET, "publish_key": PUBLISH_KEY}}
    )
    _, shop = merchant
    token = session_token(shop, SECRET)
    answers = []
    for request in _undecodable_credentials(gw.path, shop, token):
        status, body = await raw_json(gw.port, request)
        answers.append((request[-40:], status, body))
    wrong = [a for a in answers if a[1] != 401 or (a[2] or {}).get("error") != "invalid_token"]
    assert not wrong, f"expected 401 invalid_token JSON: {wrong}"
    assert all(isinstance(body.get("message"), str) for _, _, body in answers)
    # an honest request still gets through after all of that
    status, body = await raw_json(
        gw.port, b"POST " + gw.path.encode() + b"/ticket?shop=" + shop.encode() + b" HTTP/1.1"
        + HOST + b"Authorization: Bearer " + token.encode()
    )
    assert status == 200 and "ticket" in body, (status, body)
    assert gw.returncode is None
    log = gw.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:2000]
    assert "Error handling request" not in log, log[-2000:]
    assert PUBLISH_KEY not in log and SECRET not in log
    assert leaked_fragments(log, token.rsplit(".", 1)[1]) == [], "JWT signature in the log"


# -- malformed request lines: liveness, delivery, bounded logging ------------------


def _malformed_lines(path: str) -> list[bytes]:
    """~8 KB request lines the HTTP parser rejects; the last two made the old
    URL-password pattern backtrack quadratically when the line reached the log."""
    head = f"GET {path}?shop=x&".encode()
    tail = b" HTTP/1.1\r\nHost: flood\r\n\r\n"
    return [
        head + b"a" * 8000 + b"\x01" + tail,
        head + b"a" * 4000 + b" broken " + b"b" * 4000 + tail,
        head + b"://a:" * 1600 + b"\x01" + tail,
        head + b"x://a:" * 1333 + b"\x01" + tail,
    ]


async def test_malformed_line_flood_keeps_liveness_and_delivery(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    gw = gateway_factory.start()
    mid, shop = merchant
    lines = _malformed_lines(gw.path)
    loop = asyncio.get_running_loop()
    async with open_stream(gw.stream_url(shop)) as honest:
        await honest.next_event_of("connected")

        async def flood() -> list[bytes]:
            tasks = []
            start = loop.time()
            for i in range(50):  # ten a second for five seconds
                tasks.append(asyncio.create_task(exchange(gw.port, lines[i % 4], timeout=10)))
                await asyncio.sleep(max(0.0, start + (i + 1) / 10 - loop.time()))  # pacing
            return list(await asyncio.gather(*tasks))

        async def publish_during() -> list[int]:
            sent = []
            start = loop.time()
            for n in range(10):
                await publish(redis_server.url, f"merchant:{mid}:stage", {"n": n})
                sent.append(n)
                await asyncio.sleep(max(0.0, start + (n + 1) / 2 - loop.time()))  # pacing
            return sent

        with LivenessProbe(gw.port) as probe:
            answers, sent = await asyncio.gather(flood(), publish_during())
        print(f"\n/health/live during the flood: {probe.summary()}")

        received = [json.loads((await honest.next_event_of("stage", timeout=10)).data)["n"]
                    for _ in sent]
        assert received == sent, "the open stream lost events during the flood"
        assert not honest.closed
    statuses = [status_of(a) for a in answers]
    bad = [(s, a[:80]) for s, a in zip(statuses, answers, strict=True) if s not in (400, None)]
    assert not bad, f"malformed lines must get 400 (or a close): {bad[:5]}"
    assert probe.median() < 0.1, f"/health/live stalled during the flood: {probe.summary()}"
    assert "Traceback" not in gw.log_text()


# README.md: "warnings repeated with the same text are logged 5 times per 10 s"
LOG_BURST, LOG_WINDOW_S = 5, 10.0


async def test_identical_malformed_requests_log_a_bounded_number_of_short_lines(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory.start()
    marker = b"rate-limit-marker-5e1f"
    raw = b"GET /?" + marker + b"=" + b"q" * 2000 + b"\x01 HTTP/1.1\r\nHost: h\r\n\r\n"
    n = 300
    started = time.monotonic()
    answers = await bounded_gather((partial(exchange, gw.port, raw) for _ in range(n)), 20)
    elapsed = time.monotonic() - started
    assert [status_of(a) for a in answers] == [400] * n
    assert gw.live()
    log = gw.log_text()
    lines = [line for line in log.splitlines() if "malformed request" in line]
    windows = int(elapsed // LOG_WINDOW_S) + 1  # a fresh gateway: the first window opens now
    print(f"\n{n} malformed requests in {elapsed:.1f} s -> {len(lines)} log lines")
    assert 1 <= len(lines) <= LOG_BURST * windows, "\n".join(lines[:20])
    assert all(len(line) < 200 for line in lines), lines[:3]
    assert marker.decode() not in log, "the raw request line reached the log"
    assert "Traceback" not in log
    assert len(log.splitlines()) < 30, log[-3000:]


# -- a payload nested too deep for a lagging stream's coalescing -------------------


async def test_a_payload_nested_too_deep_never_stops_fan_out(
    redis_server: Any, merchant: Any, gateway_factory: Any
) -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting; a lagging
    stream's coalescing parses payloads, so that must not reach the shared reader."""
    gw = gateway_factory.start(config={"sse": {"max_queue": 100_000}})
    merchant_id, shop = merchant
    lagging = stalled_stream(gw, shop)
    try:
        async with open_stream(gw.stream_url(shop)) as healthy:
            await healthy.next_event_of("connected")
            big = "x" * 10_000
            for _ in range(1000):  # fill the lagging client's socket so it queues
                await publish(redis_server.url, f"merchant:{merchant_id}:stage", big)
            await publish(redis_server.url, f"merchant:{merchant_id}:progress", "[" * 100_000)
            await publish(redis_server.url, f"merchant:{merchant_id}:stage", "after")
            while (event := await healthy.next_event(timeout=10)).data != "after":
                assert event.event != "resync", "the reader died and reconnected"
        _, _, body = await http_json(gw.url("/metrics"))
        assert "gateway_redis_reconnects_total 0.0" in str(body)
    finally:
        lagging.close()
