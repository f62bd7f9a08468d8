"""The demo page draws job bars from the gateway's snapshot (docs/frontend.md, "Jobs:
the snapshot and the jobs view"; docs/publishing.md, "Job state").

A real gateway (`server.demo: true`, durable publishing on), real Redis and
PostgreSQL, headless Debian Chromium. 40 % for job A and `completion` for job
B are published durably (POST {path}/publish), then the demo page is opened:
both bars are drawn from the snapshot before any new event; a reload shows the
same; a later progress of A moves only A's bar.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from browser_support import chromium_page
from playwright.async_api import Page
from support import http_json, wait_for
from test_jobs_client_browser import bar, job_rows, wait_rows

pytestmark = pytest.mark.timeout(90)

KEY = "jobs-browser-e2e-publish-key-5d21"


async def publish_durably(gw: Any, items: list[dict[str, Any]]) -> list[str]:
    """POST {path}/publish (application/json, the publish key); the ids, in order."""
    status, _, reply = await http_json(
        gw.url(f"{gw.path}/publish"), "POST",
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        json_body=items,
    )
    assert status == 200, reply
    return list(reply["ids"])


async def page_events(page: Page) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate("window.gatewayEvents || []")
    return events


async def drawn_from_snapshot(page: Page, ids: list[str]) -> None:
    """Bars A 40 % and B done, drawn from one snapshot and nothing else."""
    try:
        await wait_for(lambda: page.evaluate("window.gatewayStatus === 'open'"), timeout=10)
    except TimeoutError:
        raise AssertionError("the demo's stream never opened") from None
    try:
        await wait_rows(page, [bar("A", "running", 40), bar("B", "done", 100)])
    except AssertionError as e:
        types = [ev["type"] for ev in await page_events(page)]
        if "snapshot" not in types:
            raise AssertionError(
                f"no snapshot frame reached the page (events: {types})"
            ) from e
        raise
    events = await page_events(page)
    assert [ev["type"] for ev in events] == ["snapshot"], events  # no new event
    [snap] = events
    assert snap["id"] == ids[-1]
    assert [(j["job"], j["event"], j["id"]) for j in snap["data"]["jobs"]] == [
        ("A", "progress", ids[0]), ("B", "completion", ids[1]),
    ]
    assert [r["width"] for r in await job_rows(page)] == ["40%", "100%"]


async def test_done_when_5_demo_bars_from_snapshot_reload_and_live(
    gateway_factory: Any, merchant: Any
) -> None:
    started = time.monotonic()
    mid, shop = merchant
    gw = await gateway_factory.astart(config={
        "server": {"demo": True},
        "auth": {"publish_key": KEY},
    })
    ids = await publish_durably(gw, [
        {"merchantId": mid, "event": "progress", "data": {"jobId": "A", "percent": 40}},
        {"merchantId": mid, "event": "completion", "data": {"jobId": "B"}},
    ])
    async with chromium_page() as (page, console):
        await page.goto(gw.url(f"/demo/?shop={shop}"))
        await drawn_from_snapshot(page, ids)

        await page.reload()
        await drawn_from_snapshot(page, ids)

        [later] = await publish_durably(gw, [
            {"merchantId": mid, "event": "progress", "data": {"jobId": "A", "percent": 70}},
        ])
        await wait_rows(page, [bar("A", "running", 70), bar("B", "done", 100)])
        events = await page_events(page)
        assert [(ev["type"], ev["id"]) for ev in events] == [
            ("snapshot", ids[-1]), ("progress", later),
        ]
        drawn = {j["job"]: j["id"] for j in await page.evaluate("window.gatewayJobs")}
        assert drawn == {"A": later, "B": ids[1]}  # B's bar untouched
        errors = [line for line in console if line.startswith("error")]
        assert not errors, errors
    print(f"jobs browser e2e: {time.monotonic() - started:.1f}s")
