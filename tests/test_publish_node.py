"""The Node (ioredis) snippets of docs/publishing.md and the README, run for real
against a running gateway: they deliver, and each script exits on its own
(it quits its Redis connection) well within a bound.

`make test` installs Debian's nodejs and npm when absent and ioredis into
.run/node (tools/bootstrap.sh), so this test fails, rather than skips, when
they are missing, like the Chromium test. NODE_PATH may point at another
node_modules that holds ioredis.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import redis
from support import open_stream

from gateway.durable.ids import DurableId, history_keys
from gateway.durable.publisher import SCRIPT_PATH, Publisher
from tools.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "publishing.md"
README = ROOT / "README.md"
# Seconds a snippet may take from start to exit: node starts, connects and
# publishes in well under a second here; an open connection never exits.
EXIT_BOUND = 15.0
NODE = shutil.which("node")
# make test (tools/bootstrap.sh) installs nodejs and npm, then ioredis there
NODE_ENV = {
    **os.environ,
    "NODE_PATH": os.environ.get("NODE_PATH") or str(ROOT / ".run" / "node" / "node_modules"),
}


def require_node_with_ioredis() -> str:
    """The node binary; AssertionError (not a skip) when node or ioredis is missing."""
    assert NODE, "node is not installed: run tools/bootstrap.sh (make test does)"
    probe = subprocess.run(
        [NODE, "-e", "require.resolve('ioredis')"],
        capture_output=True, text=True, timeout=20, check=False, env=NODE_ENV,
    )
    why = [line for line in probe.stderr.splitlines() if "Error" in line][:1]
    assert probe.returncode == 0, (
        f"ioredis not found in NODE_PATH={NODE_ENV['NODE_PATH']}: run tools/bootstrap.sh "
        f"(make test does); {why}"
    )
    return NODE


RUN = """
const Redis = require('ioredis');
const { publishDurable } = require('./gateway-publish');
(async () => {
  const redis = new Redis(process.env.REDIS_URL);
  const [mid, first, second] = process.argv.slice(2);
  await redis.script('FLUSH');
  const a = await publishDurable(redis, mid, 'progress', JSON.parse(first));
  const b = await publishDurable(redis, mid, 'stage', second);
  console.log(JSON.stringify([a, b]));
  redis.disconnect();
})().catch((err) => { console.error(err); process.exit(1); });
"""


def js_blocks(doc: Path) -> list[str]:
    return re.findall(r"```js\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)


def snippet() -> str:
    module = [b for b in js_blocks(DOC) if "module.exports" in b]
    assert len(module) == 1, "docs/publishing.md: one js block exports publishDurable"
    return module[0]


def usage_snippet(doc: Path, marker: str, mid: str) -> str:
    """The one js block of ``doc`` containing ``marker``, its example merchant
    id m-1001 replaced by ``mid`` (the only change)."""
    found = [b for b in js_blocks(doc) if marker in b and "module.exports" not in b]
    assert len(found) == 1, f"{doc.name}: one js block with {marker!r}"
    assert "'m-1001'" in found[0] or "merchant:m-1001:" in found[0], found[0]
    return found[0].replace("m-1001", mid)


def run_to_exit(node: str, script: str, cwd: Path, redis_url: str) -> str:
    """Run ``script`` with node; it must exit 0 by itself within EXIT_BOUND s."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [node, script], cwd=cwd, capture_output=True, text=True,
            timeout=EXIT_BOUND, check=False, env={**NODE_ENV, "REDIS_URL": redis_url},
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{script} still running after {EXIT_BOUND} s: its Redis connection keeps "
            f"Node alive (stdout {exc.stdout!r})"
        ) from None
    print(f"\n{script}: exited {done.returncode} after {time.monotonic() - started:.2f} s")
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_node_snippet_through_a_running_gateway(
    gateway_factory, redis_server: RedisServer, merchant: tuple[str, str], tmp_path: Path
) -> None:
    """The stream gets each event with exactly the id the snippet returned; the
    snippet and the Python helper number one merchant's events as one sequence."""
    node = require_node_with_ioredis()
    (tmp_path / "gateway-publish.js").write_text(snippet())
    shutil.copy(SCRIPT_PATH, tmp_path / "publish.lua")
    (tmp_path / "run.js").write_text(RUN)
    mid, shop = merchant
    gw = await gateway_factory.astart()
    client = redis.Redis.from_url(redis_server.url)
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            assert s.status == 200
            assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
            done = await asyncio.to_thread(
                subprocess.run,
                [node, "run.js", mid, '{"jobId": "po-42", "percent": 40}', "packing"],
                cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
                env={**NODE_ENV, "REDIS_URL": redis_server.url},
            )
            assert done.returncode == 0, done.stderr
            node_ids = json.loads(done.stdout)
            python_id = await asyncio.to_thread(
                Publisher(client).publish, mid, "error", {"jobId": "po-42"}
            )
            got = await s.events(3, timeout=5)
        entries = client.xrange(history_keys(mid)[0])
    finally:
        client.close()
    assert [(e.id, e.event, e.data) for e in got] == [
        (node_ids[0], "progress", '{"jobId":"po-42","percent":40}'),
        (node_ids[1], "stage", "packing"),
        (python_id, "error", '{"jobId":"po-42"}'),
    ]
    first, second, third = (DurableId.parse(i) for i in (*node_ids, python_id))
    assert first and second and third
    assert first.epoch == second.epoch == third.epoch
    assert [first.offset, second.offset, third.offset] == [1, 2, 3]
    assert [e[1] for e in entries] == [
        {b"e": b"progress", b"d": b'{"jobId":"po-42","percent":40}'},
        {b"e": b"stage", b"d": b"packing"},
        {b"e": b"error", b"d": b'{"jobId":"po-42"}'},
    ]


async def test_publishing_md_usage_snippet_delivers_and_exits(
    gateway_factory, redis_server: RedisServer, merchant: tuple[str, str], tmp_path: Path
) -> None:
    """The usage block under publishDurable, run as written: the stream gets its
    event with the id it printed, and node exits 0 on its own (redis.quit())."""
    node = require_node_with_ioredis()
    mid, shop = merchant
    (tmp_path / "gateway-publish.js").write_text(snippet())
    shutil.copy(SCRIPT_PATH, tmp_path / "publish.lua")
    (tmp_path / "main.js").write_text(usage_snippet(DOC, "require('./gateway-publish')", mid))
    gw = await gateway_factory.astart()
    async with open_stream(gw.stream_url(shop)) as s:
        assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
        out = await asyncio.to_thread(run_to_exit, node, "main.js", tmp_path, redis_server.url)
        got = await s.next_event_of("progress", timeout=5)
    printed = re.fullmatch(r"published (\S+)\n", out)
    assert printed, out
    assert (got.id, got.data) == (printed.group(1), '{"jobId":"po-42","percent":40}')


async def test_readme_plain_publish_snippet_delivers_and_exits(
    gateway_factory, redis_server: RedisServer, merchant: tuple[str, str], tmp_path: Path
) -> None:
    """The README's plain ioredis PUBLISH: delivered, and node exits on its own."""
    node = require_node_with_ioredis()
    mid, shop = merchant
    (tmp_path / "plain.js").write_text(usage_snippet(README, "redis.publish(", mid))
    gw = await gateway_factory.astart()
    async with open_stream(gw.stream_url(shop)) as s:
        assert (await s.next_event_of("connected", timeout=10)).json()["merchantId"] == mid
        await asyncio.to_thread(run_to_exit, node, "plain.js", tmp_path, redis_server.url)
        got = await s.next_event_of("progress", timeout=5)
    assert got.data == '{"jobId":"po-42","percent":40}'


JOBS_RUN = """
const Redis = require('ioredis');
const { publishDurable } = require('./gateway-publish');
(async () => {
  const redis = new Redis(process.env.REDIS_URL);
  const mid = process.argv[2];
  const tenth = { jobId: 'n1', percent: 10 };
  const answers = [
    await publishDurable(redis, mid, 'progress', tenth, { seq: 2, key: 'a' }),
    await publishDurable(redis, mid, 'progress', tenth, { seq: 2, key: 'a' }),
    await publishDurable(redis, mid, 'progress', { jobId: 'n1', percent: 5 }, { seq: 1 }),
    await publishDurable(redis, mid, 'completion', { jobId: 'n1' }, { seq: 3 }),
    await publishDurable(redis, mid, 'progress', { jobId: 'n1', percent: 99 }),
  ];
  await redis.set(`gateway:jobs:{${mid}}`, 'not a hash');
  try {  // Redis's refusal of the event is thrown
    await publishDurable(redis, mid, 'progress', { jobId: 'n2', percent: 1 });
    answers.push('published');
  } catch (err) {
    answers.push(String(err.message).split(' ')[0]);
  }
  console.log(JSON.stringify(answers));
  await redis.quit();
})().catch((err) => { console.error(err); process.exit(1); });
"""


async def test_node_snippet_takes_seq_and_key(
    redis_server: RedisServer, merchant: tuple[str, str], tmp_path: Path
) -> None:
    """A repeated key answers the first id; a lower seq and an event after the job's
    completion answer null (stale): the same answers as the API and the Python helper.
    A refused event (a job key of the wrong type) is thrown."""
    node = require_node_with_ioredis()
    (tmp_path / "gateway-publish.js").write_text(snippet())
    shutil.copy(SCRIPT_PATH, tmp_path / "publish.lua")
    (tmp_path / "jobs.js").write_text(JOBS_RUN)
    mid, _ = merchant
    done = await asyncio.to_thread(
        subprocess.run, [node, "jobs.js", mid], cwd=tmp_path, capture_output=True, text=True,
        timeout=30, check=False, env={**NODE_ENV, "REDIS_URL": redis_server.url},
    )
    assert done.returncode == 0, done.stderr
    first, repeat, lower, completion, late, refused = json.loads(done.stdout)
    assert first and repeat == first and lower is None and late is None
    assert refused == "WRONGTYPE"
    assert completion not in (None, first)
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert len(client.xrange(history_keys(mid)[0])) == 2  # nothing else was recorded
    finally:
        client.close()
