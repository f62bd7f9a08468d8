"""/health, /health/live and /metrics end to end (README.md "Health and metrics")."""

from __future__ import annotations

import asyncio
import re
import time

import jwt
from hostile_support import ticket_for
from ops_support import get_health, get_metrics, metric, poll
from support import http_json, open_stream, publish, unique_merchant

import gateway

DOCUMENTED_METRICS = (
    "gateway_connections",
    "gateway_merchants_subscribed",
    "gateway_redis_messages_total",
    "gateway_events_delivered_total",
    "gateway_slow_client_disconnects_total",
    "gateway_redis_reconnects_total",
)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def test_health_shape_and_live(merchant, gateway_factory):
    _, shop = merchant
    gw = await gateway_factory.astart()
    (status, body, elapsed), _ = await poll(
        lambda: get_health(gw), lambda r: r[0] == 200, 10, what="/health 200"
    )
    assert body["status"] == "ok", body
    for dep in ("redis", "postgres", "delivery"):
        assert body[dep]["status"] == "ok", body
        assert _is_number(body[dep]["latency_ms"]) and body[dep]["latency_ms"] >= 0, body
    assert body["connections"] == 0 and body["merchants"] == 0, body
    assert _is_number(body["uptime_s"]) and body["uptime_s"] >= 0, body
    assert body["version"] == gateway.__version__, body
    assert elapsed < 2, elapsed

    status, _, live = await http_json(gw.url("/health/live"))
    assert status == 200, live
    status, ready, _ = await get_health(gw, "/health/ready")
    assert status == 200 and ready["status"] == "ok", ready
    assert ready.keys() == body.keys(), ready

    # the counts follow an open stream
    async with open_stream(gw.stream_url(shop)) as s:
        assert (await s.next_event(timeout=5)).event == "connected"
        status, body, _ = await get_health(gw)
        assert status == 200, body
        assert body["connections"] == 1 and body["merchants"] == 1, body
    (status, body, _), _ = await poll(
        lambda: get_health(gw), lambda r: r[1]["connections"] == 0, 5, what="connections 0"
    )
    first_uptime = body["uptime_s"]
    (_, body, _), _ = await poll(
        lambda: get_health(gw), lambda r: r[1]["uptime_s"] > first_uptime, 5, 0.1, "uptime moves"
    )


async def test_metrics_names_and_movement(redis_server, merchant, gateway_factory):
    mid, shop = merchant
    gw = await gateway_factory.astart()
    status, headers, text = await http_json(gw.url("/metrics"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain"), headers
    for name in (*DOCUMENTED_METRICS, "gateway_refusals_total"):
        kind = "counter" if name.endswith("_total") else "gauge"
        base = name.removesuffix("_total")
        # prometheus-client names a counter family with or without `_total` by version
        assert re.search(rf"^# TYPE ({name}|{base}) {kind}$", text, re.M), name
    before = await get_metrics(gw)
    for name in DOCUMENTED_METRICS:
        metric(before, name)  # present as a sample too
    for code in ("invalid_shop", "unknown_merchant", "too_many_connections", "unavailable"):
        metric(before, "gateway_refusals_total", code=code)
    assert metric(before, "gateway_connections") == 0

    # refusals{code} moves after a 400
    status, _, body = await http_json(gw.stream_url("Not A Shop"))
    assert status == 400 and body["error"] == "invalid_shop", body
    m = await get_metrics(gw)
    assert metric(m, "gateway_refusals_total", code="invalid_shop") == (
        metric(before, "gateway_refusals_total", code="invalid_shop") + 1
    )

    async with open_stream(gw.stream_url(shop)) as s1, open_stream(gw.stream_url(shop)) as s2:
        for s in (s1, s2):
            assert (await s.next_event(timeout=5)).event == "connected"
        m = await get_metrics(gw)
        assert metric(m, "gateway_connections") == 2, m
        assert metric(m, "gateway_merchants_subscribed") == 1, m

        for i in range(3):
            await publish(redis_server.url, f"merchant:{mid}:progress", {"jobId": "j", "i": i})
        for s in (s1, s2):
            events = [await s.next_event_of("progress", timeout=5) for _ in range(3)]
            assert [e.json()["i"] for e in events] == [0, 1, 2]
        m = await get_metrics(gw)
        assert metric(m, "gateway_redis_messages_total") == (
            metric(before, "gateway_redis_messages_total") + 3
        ), m
        assert metric(m, "gateway_events_delivered_total") == (
            metric(before, "gateway_events_delivered_total") + 6
        ), m
        # the latency histogram observes each delivered message once (not per stream)...
        observed = metric(m, "gateway_delivery_latency_seconds_count")
        assert observed == metric(before, "gateway_delivery_latency_seconds_count") + 3, m
        for _ in range(3):  # ...and never a canary, though each /health sends one through
            status, _, body = await http_json(gw.url("/health"))  # the same reader
            assert status == 200 and body["delivery"]["status"] == "ok", body
        m = await get_metrics(gw)
        assert metric(m, "gateway_delivery_latency_seconds_count") == observed, m
        _, _, text = await http_json(gw.url("/metrics"))
        assert mid not in text and shop not in text  # no per-merchant labels
    await poll(
        lambda: get_metrics(gw),
        lambda m: metric(m, "gateway_connections") == 0,
        5,
        what="gateway_connections back to 0",
    )


async def test_no_secret_in_health_metrics_or_log(redis_factory, postgres_server, gateway_factory):
    redis_password = "redis-pw-Zq81xv"
    pg_password = "pg-pw-Kt55wq"
    token_secret = "session-secret-Hv27np-0123456789abcdef"
    api_key = "api-key-Lm33zr"
    r = redis_factory(password=redis_password)
    mid, shop = unique_merchant("sec")
    postgres_server.add_merchant(mid, shop)
    # trust auth: the password is accepted and ignored, but it is in the DSN the gateway holds
    dsn = postgres_server.dsn.replace("gateway@", f"gateway:{pg_password}@", 1)
    assert pg_password in dsn
    gw = await gateway_factory.astart(
        config={"auth": {"session_token_secret": token_secret, "api_key": api_key}},
        redis=r,
        postgres=dsn,
    )
    now = int(time.time())
    token = jwt.encode(
        {"dest": f"https://{shop}", "aud": api_key, "exp": now + 60, "nbf": now - 1},
        token_secret,
        algorithm="HS256",
    )
    # exercise the paths that log: a stream with a token, a refused token, a ticket
    async with open_stream(gw.stream_url(shop, token=token)) as s:
        assert s.status == 200
        assert (await s.next_event(timeout=5)).event == "connected"
        await publish(r.url, f"merchant:{mid}:progress", {"jobId": "x"})
        assert (await s.next_event_of("progress", timeout=5)).json() == {"jobId": "x"}
    status, _, body = await http_json(gw.stream_url(shop, token=token + "x"))
    assert status == 401 and body["error"] == "invalid_token", body
    status, ticket = await ticket_for(gw, shop, token)
    assert status == 200, ticket
    async with open_stream(gw.stream_url(shop, ticket=ticket["ticket"])) as s:
        assert s.status == 200

    await poll(lambda: get_health(gw), lambda r: r[0] == 200, 10, what="/health 200")
    _, _, health_text = await http_json(gw.url("/health"))
    _, _, metrics_text = await http_json(gw.url("/metrics"))
    await asyncio.to_thread(gw.stop)
    log = gw.log_text()
    assert "redis source" in log and "stream open" in log, log  # the log was written
    secrets = {
        "redis password": redis_password,
        "postgres password": pg_password,
        "session token secret": token_secret,
        "api key": api_key,
        "session token": token,
        "ticket": ticket["ticket"],
    }
    for where, text in (
        ("/health", str(health_text)),
        ("/metrics", str(metrics_text)),
        ("log", log),
    ):
        for what, secret in secrets.items():
            assert secret not in text, f"{what} leaked in {where}"
