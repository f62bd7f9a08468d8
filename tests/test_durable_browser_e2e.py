"""A gateway dies under a browser; durable events published meanwhile still arrive.

nginx (the shipped config/nginx.conf, `hash $arg_shop consistent`) in front of
two gateways with durable publishing on. Headless Debian Chromium holds a plain
`EventSource` (no client library, so nothing deduplicates for it) on a page of
nginx's origin. The gateway holding the stream is SIGKILLed, durable events are
published during the gap, and the browser's own reconnect (Last-Event-ID,
through nginx, to the other gateway) must show each of them exactly once, in
order, with no `resync` (README.md, "Durable publishing").
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

from browser_support import chromium_page
from ops_support import get_metrics, metric
from playwright.async_api import Page, Route
from support import http_json, wait_for
from test_nginx_e2e import STREAM_PATH, nginx_conf

from tools.services import free_port

KEY = "durable-browser-e2e-publish-key-91c2"
RETRY_MS = 1500  # the browser waits this long before reconnecting: the gap
GAP_EVENTS = 5

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>durable e2e</title>
<script>
// Every event the EventSource dispatches, as it dispatches it.
window.received = [];
window.opens = 0;
window.connectionErrors = 0;
const source = new EventSource(%(url)s);
source.addEventListener('connected', () => { window.opens += 1; });
for (const type of ['progress', 'stage', 'completion', 'resync', 'shutdown', 'revoked']) {
  source.addEventListener(type, (ev) => {
    window.received.push({type, id: ev.lastEventId, data: ev.data});
  });
}
source.addEventListener('error', (ev) => {  // ours carry data; a dropped connection none
  if (ev.data !== undefined) {
    window.received.push({type: 'error', id: ev.lastEventId, data: ev.data});
  } else {
    window.connectionErrors += 1;
  }
});
</script>
"""


async def test_browser_reconnects_to_the_other_gateway_and_gets_the_gap(
    gateway_factory, nginx_factory, merchant
) -> None:
    started = time.monotonic()
    mid, shop = merchant
    config = {"auth": {"publish_key": KEY}, "sse": {"retry_ms": RETRY_MS}}
    gws = [await gateway_factory.astart(config=config) for _ in range(2)]
    port = free_port()
    upstream = [f"127.0.0.1:{gw.port}" for gw in gws]
    n = nginx_factory(nginx_conf(0, port, upstream_servers=upstream), port=port)
    assert "hash $arg_shop consistent;" in n.conf_text
    origin = f"http://127.0.0.1:{port}"
    page_url = f"{origin}/durable-e2e.html"
    html = PAGE % {"url": json.dumps(f"{STREAM_PATH}?shop={shop}")}

    async def publish_durably(gw: Any, items: list[tuple[str, str]]) -> list[str]:
        """POST {path}/publish straight to one gateway; the ids, in order."""
        body = [{"merchantId": mid, "event": e, "data": d} for e, d in items]
        status, _, reply = await http_json(
            gw.url(f"{gw.path}/publish"), "POST", {"Authorization": f"Bearer {KEY}"},
            json_body=body,
        )
        assert status == 200, reply
        return list(reply["ids"])

    async def received(page: Page, count: int, within: float) -> list[dict[str, Any]]:
        """What the page's EventSource dispatched, once it is at least `count` events."""
        got: list[dict[str, Any]] = []

        async def enough() -> bool:
            got[:] = await page.evaluate("window.received")
            return len(got) >= count

        try:
            await wait_for(enough, timeout=within)
        except TimeoutError:
            raise AssertionError(f"{count} events expected in the page, got {got}") from None
        return got

    async def connections(gw: Any) -> float:
        return metric(await get_metrics(gw), "gateway_connections")

    async with chromium_page() as (page, console):

        async def serve(route: Route) -> None:
            await route.fulfill(status=200, content_type="text/html", body=html)

        # the page comes from nginx's origin: its EventSource is same-origin
        await page.route(page_url, serve)
        await page.goto(page_url)
        try:
            await wait_for(lambda: page.evaluate("window.opens === 1"), timeout=10)
        except TimeoutError:
            raise AssertionError(f"stream never opened; console: {console}") from None

        # The gateway that nginx's hash picked for this shop holds the stream.
        async def holder_of() -> Any:
            counts = [await connections(gw) for gw in gws]
            return gws[counts.index(1)] if sorted(counts) == [0, 1] else None

        holder = await wait_for(holder_of, timeout=5, message="(one gateway holds it)")
        survivor = gws[1 - gws.index(holder)]

        [before] = await publish_durably(survivor, [("progress", '{"jobId":"j","n":0}')])
        assert [e["id"] for e in await received(page, 1, 5)] == [before]

        holder.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(holder.wait, 5) == -signal.SIGKILL
        killed = time.monotonic()
        # one progress per job: a replay queued at once coalesces a job's progress
        # to its newest (README.md, "The stream"), which is not what is tested here
        gap_items = [("progress", f'{{"jobId":"j{k}","n":{k}}}') for k in range(1, GAP_EVENTS)]
        gap_items.append(("stage", "packing"))
        gap = await publish_durably(survivor, gap_items)
        published_in = time.monotonic() - killed
        # the browser reconnects (after RETRY_MS), through nginx, to the survivor
        await received(page, 1 + GAP_EVENTS, 10)
        assert await page.evaluate("window.opens") == 2
        [after] = await publish_durably(survivor, [("completion", '{"jobId":"j"}')])
        got = await received(page, 2 + GAP_EVENTS, 5)

        expected = [{"type": "progress", "id": before, "data": '{"jobId":"j","n":0}'}]
        expected += [
            {"type": e, "id": i, "data": d}
            for i, (e, d) in zip(gap, gap_items, strict=True)
        ]
        expected.append({"type": "completion", "id": after, "data": '{"jobId":"j"}'})
        assert got == expected, got  # each once, in order, no resync
        assert await page.evaluate("window.connectionErrors") >= 1

    # The gap's events came as the survivor's replay of the browser's Last-Event-ID
    # (they were published before it reconnected), not live.
    opened = [
        line for line in survivor.log_text().splitlines()
        if f"stream open merchant={mid} " in line
    ]
    assert len(opened) == 1 and opened[0].endswith(f"replayed={GAP_EVENTS}"), (
        opened, f"gap published in {published_in:.3f}s"
    )
    print(f"durable browser e2e: {time.monotonic() - started:.1f}s")
