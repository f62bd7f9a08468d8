"""`server.workers: 2`: a supervisor and two worker processes sharing the port.

Each worker holds its own shared Redis subscription per merchant; a publish
reaches streams held by both; /metrics (prometheus-client multiprocess mode)
reports the total across workers; SIGTERM to the supervisor drains both.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal

import aiohttp
import redis.asyncio as aioredis
from support import SSEStream, http_json, open_stream, publish, wait_for

STREAMS = 20


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


async def test_two_workers_share_port_fan_out_metrics_and_drain(
    gateway_factory, redis_server, merchant
) -> None:
    mid, shop = merchant
    gw = await gateway_factory.astart(
        config={"server": {"workers": 2, "shutdown_timeout": 3}, "sse": {"linger": 1}}
    )
    # /health/live answered from the first worker to listen; wait for both
    await wait_for(
        lambda: gw.log_text().count(f"listening on 127.0.0.1:{gw.port}") == 2,
        timeout=15,
        message="(both workers listening)",
    )
    url = gw.stream_url(shop)
    channel = f"merchant:{mid}:progress"
    rds = aioredis.Redis.from_url(redis_server.url)

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(contextlib.aclosing(rds))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
            )
        )
        # Each connection has its own source port; SO_REUSEPORT spreads them
        # over both workers (all 20 on one worker: probability 2 * 2**-20).
        streams: list[SSEStream] = list(
            await asyncio.gather(
                *(
                    stack.enter_async_context(open_stream(url, session=session))
                    for _ in range(STREAMS)
                )
            )
        )
        assert all(s.status == 200 for s in streams)
        for s in streams:
            assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid

        # One subscription per worker for this merchant, whatever the number
        # of streams: both workers hold some of the 20.
        numsub = dict(await rds.pubsub_numsub(channel))
        assert numsub[channel.encode()] == 2, numsub

        receivers = await publish(redis_server.url, channel, {"jobId": "w", "percent": 5})
        assert receivers == 2
        got = await asyncio.gather(*(s.next_event(timeout=5) for s in streams))
        assert {(e.event, e.data) for e in got} == {("progress", '{"jobId": "w", "percent": 5}')}
        assert len({e.id for e in got}) <= 2  # ids are per process

        # /metrics on whichever worker answers reports the sum (workers sync ~1 s)
        async def total_connections() -> bool:
            for _ in range(4):  # several scrapes land on both workers
                status, _, text = await http_json(gw.url("/metrics"))
                if status != 200 or metric(text, "gateway_connections") != STREAMS:
                    return False
            return True

        await wait_for(total_connections, timeout=10, message="(gateway_connections == 20)")
        _, _, text = await http_json(gw.url("/metrics"))
        delivered = metric(text, "gateway_events_delivered_total")
        assert delivered is not None and delivered >= STREAMS, text

        # SIGTERM to the supervisor: every stream, on both workers, is told
        # to reconnect elsewhere and closed; the supervisor exits 0.
        gw.send_signal(signal.SIGTERM)
        shutdowns = await asyncio.gather(
            *(s.next_event_of("shutdown", timeout=10) for s in streams)
        )
        assert all(ev.json() == {"reason": "shutdown"} for ev in shutdowns)
        assert all(ev.retry is not None for ev in shutdowns)
        await asyncio.gather(*(s.wait_closed(timeout=10) for s in streams))
        assert await asyncio.to_thread(gw.wait, 10) == 0
        assert len(re.findall(r"stream open ", gw.log_text())) == STREAMS
