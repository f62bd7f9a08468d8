"""The JS client's jobs view, in headless Chromium, against a scripted stream.

A unit test of gateway/static/gateway-events.js and the demo page: a small
aiohttp server started here emits exactly the frames of the contract's "Job
state: snapshot, stale events, idempotent publishing" section (`connected`,
`snapshot`, live events, `resync` + a new snapshot, late events with lower
ids), one frame when the test says so, and the page's view and `onJob`
callbacks are checked after each step: built from the snapshot, updated by
live events, never moved backwards by a durable id not greater than the
job's, emptied on `resync` and rebuilt from the snapshot that follows, kept
across a reconnect that replays, and the snapshot's id is the one a reopen
resumes from. No gateway, Redis or PostgreSQL is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from browser_support import chromium_page
from playwright.async_api import Page
from support import wait_for

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "static"
SHOP = "jobs-client.myshopify.com"
MAX_FRAMES = 1000  # frames one scripted connection may be told to send

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>jobs view</title>
<script type="module">
import { openGatewayStream } from '/static/gateway-events.js';
const params = new URLSearchParams(location.search);
window.events = [];   // onEvent calls, with the view as it was then
window.changes = [];  // onJob (option) calls
window.second = [];   // a listener added with stream.onJob(fn), removed after 2 calls
const stream = openGatewayStream({
  url: '/stream', shop: @SHOP@,
  jobKey: params.get('jobKey') || undefined,
  maxJobs: Number(params.get('maxJobs')) || undefined,
  onEvent(ev) {
    window.events.push({type: ev.type, id: ev.id, view: stream.jobs().map((j) => [j.job, j.id])});
  },
  onJob(job, change) {
    window.changes.push({change, job: job.job, event: job.event, id: job.id, ended: job.ended,
                         data: job.data});
  },
  onStatus(status) { window.status = status; },
});
window.stream = stream;
const off = stream.onJob((job, change) => {
  window.second.push([change, job.job]);
  if (window.second.length === 2) off();
});
window.view = () => stream.jobs().map((j) => ({...j}));
window.viewIsCached = () => stream.jobs() === stream.jobs() && Object.isFrozen(stream.jobs());
</script>
""".replace("@SHOP@", json.dumps(SHOP))


def frame(event: str, data: Any, event_id: str | None = None, retry: int | None = None) -> str:
    """One SSE frame as the gateway writes it (`data` given as a JSON value or text)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"retry: {retry}\n" if retry is not None else ""
    head += f"id: {event_id}\n" if event_id is not None else ""
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return head + f"event: {event}\n" + lines + "\n"


def connected(retry: int = 200) -> str:
    return frame("connected", {"merchantId": "m-jobs", "shop": SHOP}, retry=retry)


def snapshot(snapshot_id: str, jobs: list[tuple[Any, str, str, dict[str, Any]]]) -> str:
    """`event: snapshot` as docs/publishing.md spells it; `jobs`: (job, event, id, payload)."""
    body = {"jobs": [{"job": j, "event": e, "id": i, "data": d} for j, e, i, d in jobs]}
    return frame("snapshot", body, snapshot_id)


class Connection:
    """One stream request the scripted server received; it writes what it is told."""

    def __init__(self, request: web.Request) -> None:
        self.last_event_id = request.headers.get("Last-Event-ID")
        self.query = dict(request.query)
        self.commands: asyncio.Queue[str | int | None] = asyncio.Queue()

    def send(self, *frames: str) -> None:
        for f in frames:
            self.commands.put_nowait(f)

    def refuse(self, status: int = 503) -> None:
        """Answer this request with `status` (it must be the first command)."""
        self.commands.put_nowait(status)

    def end(self) -> None:
        self.commands.put_nowait(None)


class ScriptedGateway:
    """Serves the client, the demo page and a stream endpoint driven by the test."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[Connection] = asyncio.Queue()
        self.base = ""

    async def stream(self, request: web.Request) -> web.StreamResponse:
        conn = Connection(request)
        self.connections.put_nowait(conn)
        first = await conn.commands.get()
        if isinstance(first, int):
            return web.json_response({"error": "unavailable", "message": "scripted"}, status=first)
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
        })
        await resp.prepare(request)
        command: str | int | None = first
        for _ in range(MAX_FRAMES):
            if not isinstance(command, str):
                break
            await resp.write(command.encode())
            command = await conn.commands.get()
        return resp

    async def next_connection(self, within: float = 10) -> Connection:
        return await asyncio.wait_for(self.connections.get(), within)

    def url(self, path: str) -> str:
        return self.base + path


@contextlib.asynccontextmanager
async def scripted_gateway() -> AsyncIterator[ScriptedGateway]:
    gw = ScriptedGateway()
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def demo(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "demo.html")

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get("/page.html", page)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_get("/stream", gw.stream)
    app.router.add_get("/api/realtime/events", gw.stream)
    app.router.add_get("/demo/", demo)
    app.router.add_static("/static/", STATIC)
    app.router.add_static("/demo/", STATIC)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    gw.base = f"http://{host}:{port}"
    try:
        yield gw
    finally:
        await runner.cleanup()


async def until(page: Page, expression: str, what: str, within: float = 10) -> Any:
    """Poll the page (bounded) until `expression` is truthy; its value."""
    try:
        return await wait_for(lambda: page.evaluate(expression), timeout=within, message=what)
    except TimeoutError:
        raise AssertionError(f"{what}: {await page.evaluate('window.changes ?? null')}") from None


def job(job_value: Any, event: str, event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A jobs-view entry as the client hands it over."""
    return {
        "job": job_value, "event": event, "id": event_id, "data": data,
        "ended": event in ("completion", "error"),
    }


async def test_jobs_view_snapshot_live_resync_and_no_backwards_move() -> None:
    a40 = {"jobId": "A", "percent": 40}
    b_done = {"jobId": 7}
    c_stage = {"jobId": "C", "stage": "parsing"}
    async with scripted_gateway() as gw, chromium_page() as (page, console):
        await page.goto(gw.url("/page.html"))
        c1 = await gw.next_connection()
        assert c1.last_event_id is None and "lastEventId" not in c1.query

        # 1. connected, then the snapshot: the view is built from it, in its order
        c1.send(connected(), snapshot("e1:5", [
            ("A", "progress", "e1:2", a40), (7, "completion", "e1:4", b_done),
            ("C", "stage", "e1:5", c_stage),
        ]))
        await until(page, "window.changes.length >= 3", "the snapshot's 3 jobs")
        assert await page.evaluate("window.view()") == [
            job("A", "progress", "e1:2", a40), job(7, "completion", "e1:4", b_done),
            job("C", "stage", "e1:5", c_stage),
        ]
        assert [(c["change"], c["job"]) for c in await page.evaluate("window.changes")] == [
            ("snapshot", "A"), ("snapshot", 7), ("snapshot", "C"),
        ]
        assert await page.evaluate("window.events") == [
            {"type": "snapshot", "id": "e1:5",
             "view": [["A", "e1:2"], [7, "e1:4"], ["C", "e1:5"]]},
        ]
        # 7 and "7" are one job; the view is one frozen array until it changes
        assert await page.evaluate("stream.job('7') === stream.job(7) && stream.job(7).ended")
        assert await page.evaluate("window.viewIsCached()")

        # 2. live events: A moves, a text payload and a late lower id change nothing,
        # a job first seen live (a plain, process-local id) is added, error ends C
        a60 = {"jobId": "A", "percent": 60}
        p5 = {"jobId": "P", "percent": 5}
        c_err = {"jobId": "C", "message": "bad row"}
        c1.send(
            frame("progress", a60, "e1:6"),
            frame("stage", "packing", "e1:7"),
            frame("progress", p5, "p1-1"),
            frame("progress", {"jobId": "A", "percent": 10}, "e1:3"),  # late: lower id
            frame("error", c_err, "e1:8"),
        )
        await until(page, "window.changes.some((c) => c.id === 'e1:8')", "C's error")
        assert [e["id"] for e in await page.evaluate("window.events")] == [
            "e1:5", "e1:6", "e1:7", "p1-1", "e1:3", "e1:8",
        ]  # onEvent still gets every event, the late one included
        changes = await page.evaluate("window.changes")
        assert [(c["change"], c["job"], c["id"]) for c in changes[3:]] == [
            ("event", "A", "e1:6"), ("event", "P", "p1-1"), ("event", "C", "e1:8"),
        ]
        assert await page.evaluate("window.view()") == [
            job("A", "progress", "e1:6", a60), job(7, "completion", "e1:4", b_done),
            job("C", "error", "e1:8", c_err), job("P", "progress", "p1-1", p5),
        ]

        # 3. resync empties the view (onEvent sees it empty), the new snapshot
        # (another epoch: a lower offset is no backwards move) rebuilds it
        a70 = {"jobId": "A", "percent": 70}
        d_done = {"jobId": "D"}
        c1.send(
            frame("resync", {"reason": "history_gap"}),
            snapshot("f2:3", [("A", "progress", "f2:1", a70), ("D", "completion", "f2:3", d_done)]),
        )
        await until(page, "window.changes.length >= 12", "the reset and the new snapshot")
        events = await page.evaluate("window.events")
        assert [(e["type"], e["view"]) for e in events[-2:]] == [
            ("resync", []), ("snapshot", [["A", "f2:1"], ["D", "f2:3"]]),
        ]
        changes = await page.evaluate("window.changes")
        assert [(c["change"], c["job"]) for c in changes[6:]] == [
            ("removed", "A"), ("removed", 7), ("removed", "C"), ("removed", "P"),
            ("snapshot", "A"), ("snapshot", "D"),
        ]
        assert await page.evaluate("window.view()") == [
            job("A", "progress", "f2:1", a70), job("D", "completion", "f2:3", d_done),
        ]

        # 4. stale-looking late events (an equal id, a lower id) move nothing;
        # a greater one moves only its job
        a80 = {"jobId": "A", "percent": 80}
        c1.send(
            frame("progress", {"jobId": "A", "percent": 20}, "f2:1"),
            frame("progress", {"jobId": "D", "percent": 50}, "f2:2"),
            frame("progress", a80, "f2:4"),
        )
        await until(page, "window.changes.some((c) => c.id === 'f2:4')", "A's f2:4")
        assert len(await page.evaluate("window.changes")) == 13
        assert [e["id"] for e in (await page.evaluate("window.events"))[-3:]] == [
            "f2:1", "f2:2", "f2:4",
        ]
        assert await page.evaluate("window.view()") == [
            job("A", "progress", "f2:4", a80), job("D", "completion", "f2:3", d_done),
        ]
        assert await page.evaluate("window.second") == [["snapshot", "A"], ["snapshot", 7]]

        # 5. the stream ends; EventSource resumes after the last id; a replaying
        # stream sends no snapshot and the view is kept
        c1.end()
        c2 = await gw.next_connection()
        assert c2.last_event_id == "f2:4"
        a_done = {"jobId": "A"}
        c2.send(connected(), frame("completion", a_done, "f2:5"))
        await until(page, "window.changes.some((c) => c.id === 'f2:5')", "A's completion")
        assert await page.evaluate("window.view()") == [
            job("A", "completion", "f2:5", a_done), job("D", "completion", "f2:3", d_done),
        ]

        # 6. a resync's snapshot id is where a reopen resumes: the browser's own
        # reconnect (header) and, after a refusal, the client's reopen (query)
        c2.send(frame("resync", {"reason": "redis_reconnected"}),
                snapshot("f2:6", [("D", "completion", "f2:3", d_done)]))
        await until(page, "window.events.some((e) => e.id === 'f2:6')", "the third snapshot")
        assert await page.evaluate("window.view()") == [job("D", "completion", "f2:3", d_done)]
        c2.end()
        c3 = await gw.next_connection()
        assert c3.last_event_id == "f2:6"
        c3.refuse(503)
        c4 = await gw.next_connection()  # after the client's backoff (0.5-1 s)
        assert c4.query.get("lastEventId") == "f2:6", c4.query
        c4.send(connected())
        await until(page, "window.status === 'open'", "reopened")
        assert await page.evaluate("window.view()") == [job("D", "completion", "f2:3", d_done)]
        errors = [
            line for line in console
            if line.startswith("error") and "EventSource" not in line
            and "Failed to load resource" not in line  # c3's 503, on purpose
        ]
        assert not errors, errors


async def test_ids_given_again_after_a_resync_and_frames_without_an_id() -> None:
    """Two things a real EventSource does that the view must survive:
    - after a failover lost writes, the new primary gives their ids to new events and
      the gateway sends `resync` + snapshot: an id seen before the resync is a new event
      after it (the client kept its seen ids and dropped it);
    - a frame without `id:` reports the previous id (a plain event the gateway sent
      without its id after a snapshot): it has no id of its own (the client took the
      snapshot's, and dropped the second such frame as a repeat)."""
    async with scripted_gateway() as gw, chromium_page() as (page, _):
        await page.goto(gw.url("/page.html"))
        c1 = await gw.next_connection()
        c1.send(
            connected(),
            frame("progress", {"jobId": "a", "percent": 80}, "e1:43"),
            frame("progress", {"jobId": "a", "percent": 90}, "e1:44"),  # both lost
            frame("resync", {"reason": "redis_reconnected"}),
            snapshot("e1:43", [("a", "progress", "e1:43", {"jobId": "a", "percent": 5})]),
            frame("completion", {"jobId": "a"}, "e1:44"),  # a new event under e1:44
            frame("progress", {"jobId": "b", "percent": 10}),  # no id: line
            frame("progress", {"jobId": "b", "percent": 20}),
        )
        await until(page, "window.events.some((e) => e.view.some(([j]) => j === 'b'))",
                    "b's first frame")
        await until(page, "window.changes.filter((c) => c.job === 'b').length === 2",
                    "b's second frame")
        events = await page.evaluate("window.events.map((e) => [e.type, e.id])")
        assert events == [["progress", "e1:43"], ["progress", "e1:44"], ["resync", ""],
                          ["snapshot", "e1:43"], ["completion", "e1:44"], ["progress", ""],
                          ["progress", ""]], events
        assert await page.evaluate("window.view()") == [
            job("a", "completion", "e1:44", {"jobId": "a"}),
            job("b", "progress", "", {"jobId": "b", "percent": 20}),
        ]


async def test_an_id_given_again_after_a_resync_without_a_snapshot_is_its_own() -> None:
    """A failover lost the event the tab saw last (e1:5) and gave its id to a new one;
    the gateway sent `resync` and, the merchant having no job state, no snapshot. The
    new event's frame repeats the id EventSource reported last: it is still its own
    (the client took it for a frame without an id, and the job lost its id)."""
    async with scripted_gateway() as gw, chromium_page() as (page, _):
        await page.goto(gw.url("/page.html"))
        c1 = await gw.next_connection()
        c1.send(
            connected(),
            frame("progress", {"jobId": "a", "percent": 10}, "e1:5"),
            frame("resync", {"reason": "redis_reconnected"}),
            frame("progress", {"jobId": "b", "percent": 1}, "e1:5"),
        )
        await until(page, "window.events.length === 3", "the event after the resync")
        events = await page.evaluate("window.events.map((e) => [e.type, e.id])")
        assert events == [["progress", "e1:5"], ["resync", ""], ["progress", "e1:5"]], events
        assert await page.evaluate("window.view()") == [
            job("b", "progress", "e1:5", {"jobId": "b", "percent": 1}),
        ]


async def test_a_frame_without_an_id_never_reopens_an_ended_job() -> None:
    """Plain events published before the snapshot's newest durable event come after it
    without their ids: older than the snapshot, they update a running job or add one,
    but a job the snapshot shows ended stays ended."""
    async with scripted_gateway() as gw, chromium_page() as (page, _):
        await page.goto(gw.url("/page.html"))
        c1 = await gw.next_connection()
        c1.send(
            connected(),
            snapshot("e1:9", [("a", "completion", "e1:8", {"jobId": "a"}),
                              ("b", "progress", "e1:9", {"jobId": "b", "percent": 50})]),
            frame("progress", {"jobId": "a", "percent": 90}),  # no id: line
            frame("progress", {"jobId": "b", "percent": 60}),
            frame("progress", {"jobId": "c", "percent": 5}),
            frame("stage", {"jobId": "d", "stage": "x"}, "e1:10"),
        )
        await until(page, "window.events.length === 5", "the frames after the snapshot")
        assert await page.evaluate("window.view()") == [
            job("a", "completion", "e1:8", {"jobId": "a"}),
            job("b", "progress", "", {"jobId": "b", "percent": 60}),
            job("c", "progress", "", {"jobId": "c", "percent": 5}),
            job("d", "stage", "e1:10", {"jobId": "d", "stage": "x"}),
        ]


async def test_the_view_keeps_max_jobs_removing_ended_jobs_updated_least_recently() -> None:
    async with scripted_gateway() as gw, chromium_page() as (page, _):
        await page.goto(gw.url("/page.html?maxJobs=2"))
        c1 = await gw.next_connection()
        c1.send(
            connected(),
            frame("completion", {"jobId": "x"}, "e1:1"),
            frame("completion", {"jobId": "y"}, "e1:2"),
            frame("progress", {"jobId": "z", "percent": 1}, "e1:3"),  # x goes
            frame("progress", {"jobId": "w", "percent": 1}, "e1:4"),  # y goes
            frame("progress", {"jobId": "v", "percent": 1}, "e1:5"),  # all running: kept
        )
        await until(page, "window.events.length === 5", "five events")
        assert [j["job"] for j in await page.evaluate("window.view()")] == ["z", "w", "v"]
        removed = await page.evaluate(
            "window.changes.filter((c) => c.change === 'removed').map((c) => c.job)")
        assert removed == ["x", "y"], removed


async def test_job_key_is_configurable() -> None:
    async with scripted_gateway() as gw, chromium_page() as (page, _):
        await page.goto(gw.url("/page.html?jobKey=job"))
        c1 = await gw.next_connection()
        c1.send(
            connected(),
            snapshot("e1:1", [("X", "progress", "e1:1", {"job": "X", "percent": 1})]),
            frame("progress", {"jobId": "Y", "percent": 2}, "e1:2"),  # not the key: no job
            frame("progress", {"job": "X", "percent": 3}, "e1:3"),
        )
        await until(page, "window.changes.some((c) => c.id === 'e1:3')", "X's e1:3")
        assert await page.evaluate("window.view()") == [
            job("X", "progress", "e1:3", {"job": "X", "percent": 3}),
        ]
        assert len(await page.evaluate("window.events")) == 3


JOB_ROWS = """[...document.querySelectorAll('#jobs li')].map((li) => ({
  job: li.dataset.job, state: li.dataset.state, percent: Number(li.dataset.percent),
  width: li.querySelector('.fill').style.width,
  note: li.querySelector('.job-note').textContent,
}))"""


async def job_rows(page: Page) -> list[dict[str, Any]]:
    """The demo page's job bars, in order: {job, state, percent, width, note}."""
    rows: list[dict[str, Any]] = await page.evaluate(JOB_ROWS)
    return rows


async def wait_rows(page: Page, expected: list[dict[str, Any]], within: float = 10) -> None:
    """Wait (bounded) until the demo's bars are exactly `expected` (job/state/percent)."""
    got: list[dict[str, Any]] = []

    async def drawn() -> Any:  # Any: wait_for cannot infer T from a bool coroutine
        got[:] = await job_rows(page)
        return [{k: r[k] for k in ("job", "state", "percent")} for r in got] == expected

    try:
        await wait_for(drawn, timeout=within)
    except TimeoutError:
        raise AssertionError(f"bars expected {expected}, drawn {got}") from None


def bar(job_name: str, state: str, percent: int) -> dict[str, Any]:
    return {"job": job_name, "state": state, "percent": percent}


async def test_demo_page_draws_one_bar_per_job() -> None:
    async with scripted_gateway() as gw, chromium_page() as (page, console):
        await page.goto(gw.url(f"/demo/?shop={SHOP}"))
        c1 = await gw.next_connection()
        c1.send(connected(), snapshot("e1:2", [
            ("A", "progress", "e1:1", {"jobId": "A", "percent": 40}),
            ("B", "completion", "e1:2", {"jobId": "B"}),
        ]))
        # drawn from the snapshot, before any live event
        await wait_rows(page, [bar("A", "running", 40), bar("B", "done", 100)])
        rows = await job_rows(page)
        assert [r["width"] for r in rows] == ["40%", "100%"]
        assert [e["type"] for e in await page.evaluate("window.gatewayEvents")] == ["snapshot"]
        assert await page.is_hidden("#jobs-empty")

        c1.send(frame("progress", {"jobId": "A", "percent": 55}, "e1:3"))
        await wait_rows(page, [bar("A", "running", 55), bar("B", "done", 100)])
        # a stage without percent keeps A's bar where it was
        c1.send(frame("stage", {"jobId": "A", "stage": "parsing"}, "e1:4"))
        await until(page, "document.querySelector('#jobs li .job-note').textContent"
                          " === 'Stage: parsing'", "A's stage")
        await wait_rows(page, [bar("A", "running", 55), bar("B", "done", 100)])
        c1.send(frame("error", {"jobId": "A", "message": "bad file"}, "e1:5"))
        await wait_rows(page, [bar("A", "failed", 55), bar("B", "done", 100)])
        assert (await job_rows(page))[0]["note"] == "Failed: bad file"
        # a late lower id of A draws nothing
        c1.send(frame("progress", {"jobId": "A", "percent": 10}, "e1:1"),
                frame("progress", {"jobId": "C", "percent": 5}, "e1:6"))
        await wait_rows(page, [bar("A", "failed", 55), bar("B", "done", 100),
                               bar("C", "running", 5)])
        # resync + a snapshot without A: A's bar goes, the others stay
        c1.send(frame("resync", {"reason": "history_gap"}), snapshot("e1:6", [
            ("B", "completion", "e1:2", {"jobId": "B"}),
            ("C", "progress", "e1:6", {"jobId": "C", "percent": 5}),
        ]))
        await wait_rows(page, [bar("B", "done", 100), bar("C", "running", 5)])
        # a resync whose snapshot comes later (a Redis reconnect) empties the bars
        # for a while; a job whose latest event has no percent comes back at the
        # percent this tab saw
        c1.send(frame("stage", {"jobId": "C", "stage": "saving"}, "e1:7"),
                frame("resync", {"reason": "redis_reconnected"}))
        await wait_rows(page, [])
        c1.send(snapshot("e1:7", [("B", "completion", "e1:2", {"jobId": "B"}),
                                  ("C", "stage", "e1:7", {"jobId": "C", "stage": "saving"})]))
        await wait_rows(page, [bar("B", "done", 100), bar("C", "running", 5)])
        # the single "latest event" panel still follows live events
        assert await page.text_content("#job") == "C"
        errors = [line for line in console if line.startswith("error")]
        assert not errors, errors
