"""Hostile Last-Event-IDs: ids the history cannot hold are answered without reading it.

A client looping on a durable id of another history (foreign epoch) or past the
newest event must not make the gateway read the merchant's history once per
reconnect: the newest id (one shared HMGET) already says `resync`.

Crafted ids (odd digits, huge, negative) are served or refused, never a closed 200
that leaves a phantom subscriber behind.

The looping and forged-envelope cases run directly, with `server.workers: 2`, and
through the shipped nginx config.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from ops_support import get_metrics, metric, poll
from publish_probe_support import MODES, shipped_nginx, workers_in
from support import open_stream, publish
from test_durable_e2e import AUTH, DURABLE, connected
from test_durable_e2e import post as post_as

pytestmark = pytest.mark.timeout(120)

LOOPS, ROUNDS = 20, 10  # 200 reconnects
JSON = {**AUTH, "Content-Type": "application/json"}


def _config(mode: str) -> dict[str, Any]:
    return {**DURABLE, "server": {"workers": workers_in(mode)}}


def _stream_url(gw: Any, shop: str, nginx: Any = None) -> str:
    """The stream URL of `shop` on `gw`, or through `nginx` in front of it."""
    url = gw.stream_url(shop)
    return url if nginx is None else f"http://127.0.0.1:{nginx.port}{url[len(gw.base_url):]}"


async def post(gw: Any, body: Any) -> tuple[int, Any, Any]:
    return await post_as(gw, body, JSON)


@pytest.mark.parametrize("mode", MODES)
async def test_foreign_and_past_head_ids_resync_without_a_history_read(
    gateway_factory: Any, nginx_factory: Any, merchant: Any, mode: str
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=_config(mode))
    url = _stream_url(gw, shop, shipped_nginx(nginx_factory, gw.port) if mode == "nginx" else None)
    status, _, reply = await post(gw, [{"merchantId": mid, "event": "stage", "data": n}
                                       for n in range(3)])
    assert status == 200, reply
    epoch = reply["ids"][-1].partition(":")[0]
    hostile = [f"{'0' if epoch[0] != '0' else '1'}{epoch[1:]}:1", f"{epoch}:999999"]
    before = await get_metrics(gw)

    async def loop(k: int) -> list[str]:
        reasons = []
        for n in range(ROUNDS):
            last_id = hostile[(k + n) % 2]
            async with open_stream(url, headers={"Last-Event-ID": last_id}) as s:
                await connected(s)
                first = await s.next_event(10)
                assert first.event == "resync", first
                reasons.append(json.loads(first.data)["reason"])
        return reasons

    results = await asyncio.gather(*(loop(k) for k in range(LOOPS)))
    assert [r for reasons in results for r in reasons] == ["history_gap"] * LOOPS * ROUNDS

    async def counts() -> tuple[float, float]:  # summed over workers (synced about 1 s)
        samples = await get_metrics(gw)
        return (metric(samples, "gateway_replay_misses_total"),
                metric(samples, "gateway_history_reads_total"))

    misses0, reads0 = (metric(before, "gateway_replay_misses_total"),
                       metric(before, "gateway_history_reads_total"))
    (misses, reads), _ = await poll(
        counts, lambda c: c[0] - misses0 >= LOOPS * ROUNDS, 10, what="every resync counted"
    )
    assert misses - misses0 == LOOPS * ROUNDS
    assert reads == reads0  # not one history read


@pytest.mark.parametrize("mode", MODES)
async def test_a_forged_envelope_cannot_make_a_client_skip_real_events(
    gateway_factory: Any, nginx_factory: Any, merchant: Any, redis_server: Any, mode: str
) -> None:
    """A plain PUBLISH imitating the envelope, with an id ahead of the history, is
    delivered as a plain event: resuming after it, here or on another process,
    brings every real durable event after it. (In mode "nginx" the streams of `a`
    go through the shipped nginx config in front of it.)"""
    mid, shop = merchant
    a, b = gateway_factory.start(config=_config(mode)), gateway_factory.start(config=_config(mode))
    front = {a: shipped_nginx(nginx_factory, a.port) if mode == "nginx" else None, b: None}

    async def durable(n: int) -> str:
        status, _, reply = await post(a, {"merchantId": mid, "event": "stage", "data": f"d{n}"})
        assert status == 200, reply
        return str(reply["id"])

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with open_stream(_stream_url(a, shop, front[a])) as s:
            await connected(s)
            real = [await durable(n) for n in range(1, 5)]
            epoch = real[0].partition(":")[0]
            forged_id = f"{epoch}:9"
            envelope = b"\x00gw1:%s\x00forged" % forged_id.encode()
            await client.publish(f"merchant:{mid}:stage", envelope)
            real += [await durable(n) for n in range(5, 10)]  # the real :5 to :9
            got = await s.events(10, 10)
    finally:
        await client.aclose()
    assert [e.data for e in got] == ["d1", "d2", "d3", "d4", "forged"] + [
        f"d{n}" for n in range(5, 10)
    ]
    forged = got[4]
    assert forged.id != forged_id and ":" not in forged.id  # a plain event's local id
    assert [e.id for e in got if e.data != "forged"] == real
    for gw in (a, b):  # resuming after the forged event: the same process, another one
        resume = _stream_url(gw, shop, front[gw])
        async with open_stream(resume, headers={"Last-Event-ID": forged.id}) as s:
            await connected(s)
            first = await s.next_event(10)
            if first.event == "resync":  # another process: a local id is foreign there
                assert gw is b or mode == "workers", first
            else:
                assert [first.data, *[e.data for e in await s.events(4, 10)]] == [
                    f"d{n}" for n in range(5, 10)
                ]
    # the id the forgery claimed was never handed out: a client holding real :4 gets :5-:9
    async with open_stream(b.stream_url(shop), headers={"Last-Event-ID": real[3]}) as s:
        await connected(s)
        assert [e.id for e in await s.events(5, 10)] == real[4:]


# -- crafted Last-Event-IDs: served or refused, no phantom subscriber --------------


def _crafted_ids(epoch: str) -> dict[str, str]:
    return {
        "superscript two": f"{epoch}-\u00b2",
        "5000 digits": f"{epoch}-" + "7" * 5000,
        "arabic-indic digits": f"{epoch}-\u0661\u0662\u0663",
        "fullwidth digits": f"{epoch}-\uff11\uff12",
        "only dashes": "-----",
        "empty sequence": f"{epoch}-",
        "negative": f"{epoch}--1",
        "underscored": f"{epoch}-1_0",
        "8000-char header": f"{epoch}-" + "-9" * 4000,
    }


async def _served_or_refused(url: str, headers: dict[str, str], what: str) -> str:
    """'served' (200 + connected first) or 'refused' (a JSON refusal); else fail."""
    async with open_stream(url, headers=headers) as s:
        if s.status == 200:
            try:
                first = await s.next_event(timeout=5)
            except EOFError:
                pytest.fail(f"{what}: 200 with a closed body: {bytes(s.raw)[:200]!r}")
            assert first.event == "connected", f"{what}: first event {first}"
            return "served"
        assert s.headers.get("Content-Type", "").startswith("application/json"), (
            f"{what}: {s.status} without a JSON refusal: {s.headers}"
        )
        body = await s.json_body()
        assert isinstance(body, dict) and "error" in body, f"{what}: {s.status} {body}"
        assert s.status < 500 or s.status == 503, f"{what}: {s.status} {body}"
        return f"refused {s.status} {body['error']}"


async def test_crafted_last_event_ids_leave_no_phantom_subscriber(
    gateway_factory: Any, merchant: Any, redis_server: Any
) -> None:
    gw = gateway_factory.start()
    mid, shop = merchant
    channel = f"merchant:{mid}:progress"
    async with open_stream(gw.stream_url(shop)) as first:
        await first.next_event_of("connected")
        await publish(redis_server.url, channel, {"jobId": "real", "n": 0})
        real = await first.next_event_of("progress")
    assert real.id, real
    epoch = real.id.rpartition("-")[0]
    outcomes = {}
    for name, value in _crafted_ids(epoch).items():
        outcomes[f"header {name}"] = await _served_or_refused(
            gw.stream_url(shop), {"Last-Event-ID": value}, f"Last-Event-ID {name}"
        )
        if len(value) < 6000:
            outcomes[f"query {name}"] = await _served_or_refused(
                gw.stream_url(shop, lastEventId=value), {}, f"?lastEventId= {name}"
            )
    print("\n" + "\n".join(f"  {k}: {v}" for k, v in outcomes.items()))

    await poll(lambda: get_metrics(gw), lambda m: metric(m, "gateway_connections") == 0, 10,
               what="every crafted stream closed")
    async with open_stream(gw.stream_url(shop)) as honest:
        await honest.next_event_of("connected")
        before = await get_metrics(gw)
        assert metric(before, "gateway_connections") == 1
        await publish(redis_server.url, channel, {"jobId": "after", "n": 1})
        got = await honest.next_event_of("progress", timeout=5)
        assert json.loads(got.data) == {"jobId": "after", "n": 1}
        after = await get_metrics(gw)
        delivered = metric(after, "gateway_events_delivered_total") - metric(
            before, "gateway_events_delivered_total"
        )
        assert delivered == 1, f"one publish to one stream counted {delivered} deliveries"
        assert honest.pending_events() == []
    assert "Traceback" not in gw.log_text()
