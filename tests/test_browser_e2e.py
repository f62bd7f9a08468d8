"""A real browser: headless Debian Chromium runs the demo page and its JS client.

The page is served by the gateway (``server.demo: true``) on one origin and
opens its EventSource through nginx (the shipped config/nginx.conf) on
another, with a session token exchanged for a stream ticket (CORS preflight
included).  Published events, a multi-line payload, the progress bar and a
reconnect with replay after nginx drops the stream are checked in the page.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
from browser_support import chromium_page
from playwright.async_api import Page
from support import publish, wait_for

from tools.services import NginxServer, free_port, nginx_main_conf

REPO_ROOT = Path(__file__).resolve().parent.parent
SNIPPET = REPO_ROOT / "config" / "nginx.conf"
STREAM_PATH = "/api/realtime/events"
SECRET = "browser-e2e-session-token-secret-0123456789"

def nginx_conf(gateway_port: int, nginx_port: int) -> str:
    """The shipped snippet with its documented placeholders replaced."""
    text = SNIPPET.read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
    text = text.replace("/var/log/nginx/gateway_access.log", "@PREFIX@/logs/gateway_access.log")
    return nginx_main_conf(text)


def session_token(shop: str) -> str:
    now = int(time.time())
    claims = {"dest": f"https://{shop}", "exp": now + 300, "sub": "7"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def page_events(page: Page) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate("window.gatewayEvents || []")
    return events


async def wait_events(page: Page, n: int, within: float = 10) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        events = await page_events(page)
        return events if len(events) >= n else None

    return await wait_for(enough, timeout=within, message=f"({n} events in the page)")


async def test_demo_page_through_nginx_cross_origin(
    gateway_factory, nginx_factory, redis_server, merchant
) -> None:
    started = time.monotonic()
    mid, shop = merchant
    gw_port = free_port()
    page_origin = f"http://127.0.0.1:{gw_port}"
    gw = await gateway_factory.astart(
        config={
            "server": {"port": gw_port, "demo": True},
            "cors": {"allow_origins": [page_origin]},
            "auth": {"session_token_secret": SECRET},
            "sse": {"retry_ms": 300},
        }
    )
    nginx_port = free_port()
    conf = nginx_conf(gw.port, nginx_port)
    n: NginxServer = nginx_factory(conf, port=nginx_port)
    stream_origin = f"http://127.0.0.1:{nginx_port}"
    assert stream_origin != page_origin
    page_url = (
        f"{page_origin}/demo/?shop={shop}&stream={stream_origin}{STREAM_PATH}"
        f"&token={session_token(shop)}"
    )

    async def send(event: str, payload: Any) -> None:
        assert await publish(redis_server.url, f"merchant:{mid}:{event}", payload) >= 1

    async with chromium_page() as (page, console):
        await page.goto(page_url)
        try:
            await wait_for(
                lambda: page.evaluate("window.gatewayStatus === 'open'"),
                timeout=10,
                message="(page status 'open')",
            )
        except TimeoutError:
            raise AssertionError(f"stream never opened; console: {console}") from None
        connected = await page.evaluate("window.gatewayConnected")
        assert connected == {"merchantId": mid, "shop": shop}

        # 1. a multi-line JSON payload (pretty-printed) drives the progress bar
        await send("progress", json.dumps({"jobId": "job-1", "percent": 40}, indent=2))
        # 2. a text payload with CRLF, CR and LF line breaks
        await send("stage", "line one\r\nline two\rline three\nline four")
        events = await wait_events(page, 2)
        assert [e["type"] for e in events] == ["progress", "stage"]
        assert events[0]["data"] == {"jobId": "job-1", "percent": 40}
        assert "\n" in events[0]["raw"]
        assert events[1]["raw"] == "line one\nline two\nline three\nline four"
        assert await page.get_attribute("#bar", "aria-valuenow") == "40"
        assert await page.text_content("#percent") == "40%"
        assert await page.evaluate("document.querySelector('#bar-fill').style.width") == "40%"
        assert await page.text_content("#job") == "job-1"

        # 3. nginx goes away (fast shutdown closes the stream on both sides);
        # an event published meanwhile is held in the gateway's history.
        n.stop()
        await wait_for(
            lambda: "stream close" in gw.log_text(), timeout=5, message="(gateway close)"
        )
        await send("progress", {"jobId": "job-1", "percent": 70})
        nginx_factory(conf, port=nginx_port)
        # the browser reconnects with the last id and gets the missed event
        events = await wait_events(page, 3, within=15)
        await send("completion", {"jobId": "job-1"})
        events = await wait_events(page, 4)
        assert [e["type"] for e in events] == ["progress", "stage", "progress", "completion"]
        assert events[2]["data"] == {"jobId": "job-1", "percent": 70}
        ids = [e["id"] for e in events]
        assert len(set(ids)) == 4 and all(ids), ids
        assert await page.get_attribute("#bar", "aria-valuenow") == "100"
        assert await page.get_attribute("#bar-fill", "class") == "done"

        opens = re.findall(r"stream open .*replayed=(\d+)", gw.log_text())
        assert opens == ["0", "1"], gw.log_text()[-3000:]
        # no event reached the page twice, and nothing else arrived
        assert len(await page_events(page)) == 4
    print(f"browser e2e: {time.monotonic() - started:.1f}s")
