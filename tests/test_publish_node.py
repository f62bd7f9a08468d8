"""The Node (ioredis) snippet of docs/publishing.md, run for real when node and ioredis exist.

ioredis is not a dependency of the suite: point NODE_PATH at a node_modules
that holds it (`npm install ioredis@5` in a temporary directory) to run this.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from support import unique_merchant

from gateway.durable import DurableId, encode_envelope, history_keys
from gateway.publisher import SCRIPT_PATH, Publisher
from tools.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "publishing.md"
NODE = shutil.which("node")
# make test (tools/bootstrap.sh) installs ioredis there when node and npm exist
NODE_ENV = {
    **os.environ,
    "NODE_PATH": os.environ.get("NODE_PATH") or str(ROOT / ".run" / "node" / "node_modules"),
}


def _ioredis_available() -> bool:
    if NODE is None:
        return False
    probe = subprocess.run(
        [NODE, "-e", "require.resolve('ioredis')"],
        capture_output=True, timeout=20, check=False, env=NODE_ENV,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _ioredis_available(), reason="node with ioredis (NODE_PATH) not available"
)

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


def snippet() -> str:
    blocks = re.findall(r"```js\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    module = [b for b in blocks if "module.exports" in b]
    assert len(module) == 1, "docs/publishing.md: one js block exports publishDurable"
    return module[0]


def test_node_snippet_matches_the_python_helper(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "gateway-publish.js").write_text(snippet())
    shutil.copy(SCRIPT_PATH, tmp_path / "publish.lua")
    (tmp_path / "run.js").write_text(RUN)
    mid, _ = unique_merchant("node")
    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub()
    pubsub.subscribe(f"merchant:{mid}:progress")
    try:
        done = subprocess.run(
            [NODE or "node", "run.js", mid, '{"jobId": "po-42", "percent": 40}', "packing"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
            env={**NODE_ENV, "REDIS_URL": redis_server.url},
        )
        assert done.returncode == 0, done.stderr
        first, second = (DurableId.parse(i) for i in json.loads(done.stdout))
        third = DurableId.parse(Publisher(client).publish(mid, "error", {"jobId": "po-42"}))
        entries = client.xrange(history_keys(mid)[0])
        message = None
        for _ in range(50):
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
    finally:
        pubsub.close()
        client.close()
    assert first and second and third
    assert first.epoch == second.epoch == third.epoch
    assert [first.offset, second.offset, third.offset] == [1, 2, 3]
    assert [e[1] for e in entries] == [
        {b"e": b"progress", b"d": b'{"jobId":"po-42","percent":40}'},
        {b"e": b"stage", b"d": b"packing"},
        {b"e": b"error", b"d": b'{"jobId":"po-42"}'},
    ]
    assert message is not None
    assert message["data"] == encode_envelope(str(first), b'{"jobId":"po-42","percent":40}')
