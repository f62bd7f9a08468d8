"""Job state at publish time: stale events dropped, idempotent publishing
(README "Job state"), through the HTTP API, the CLI and the Python helper,
against a real Redis and a running gateway."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from ops_support import get_metrics, metric
from support import open_stream, unique_merchant, wait_for
from test_durable_e2e import AUTH, DURABLE, REPO_ROOT, connected
from test_durable_e2e import post as post_as

from gateway.durable.ids import history_keys, idempotency_key, job_state_keys
from gateway.durable.publisher import AsyncPublisher, Outcome, Publication, Publisher
from tools.services import RedisServer

pytestmark = pytest.mark.timeout(90)

JSON = {**AUTH, "Content-Type": "application/json"}


async def post(gw: Any, body: Any) -> tuple[int, Any, Any]:
    return await post_as(gw, body, JSON)


def event(mid: str, name: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"merchantId": mid, "event": name, "data": data, **extra}


async def test_stale_and_duplicate_publishes_reach_no_stream_and_no_replay(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    async with open_stream(gw.stream_url(shop)) as s:
        await connected(s)
        answers = [await post(gw, body) for body in (
            event(mid, "progress", {"jobId": "a", "percent": 10}, seq=5),
            event(mid, "progress", {"jobId": "a", "percent": 5}, seq=5),  # not above 5
            event(mid, "progress", {"jobId": "a", "percent": 4}, seq=4),
            event(mid, "progress", {"jobId": "a", "percent": 20}, seq=6),
            event(mid, "progress", {"jobId": "a", "percent": 30}),  # no seq: keeps 6
            event(mid, "progress", {"jobId": "a", "percent": 1}, seq=6),
            event(mid, "completion", {"jobId": "a"}, key="done-a"),
            event(mid, "completion", {"jobId": "a"}, key="done-a"),  # the worker retried
            event(mid, "progress", {"jobId": "a", "percent": 99}),  # late: the job ended
            event(mid, "error", {"jobId": "a"}),  # even a terminal one
            event(mid, "stage", {"jobId": 7, "stage": "x"}, key="late", seq=1),
            event(mid, "stage", {"jobId": "7", "stage": "y"}, seq=1),  # 7 and "7": one job
        )]
        assert all(status == 200 for status, _, _ in answers), answers
        replies = [reply for _, _, reply in answers]
        published = [r["id"] for r in replies if r["id"] and "duplicate" not in r]
        assert [bool(r.get("stale")) for r in replies] == [
            False, True, True, False, False, True, False, False, True, True, False, True]
        assert replies[7] == {"id": replies[6]["id"], "duplicate": True}
        assert replies[1] == {"id": None, "stale": True}
        got = await s.events(len(published), 10)
        assert [e.id for e in got] == published
        status, _, marker = await post(gw, event(mid, "stage", "marker"))
        assert status == 200 and (await s.next_event(10)).id == marker["id"]  # nothing else
    client = redis.Redis.from_url(redis_server.url)
    try:
        history = client.xrange(history_keys(mid)[0])
        assert len(history) == len(published) + 1  # stale ones took no place
    finally:
        client.close()
    samples = await get_metrics(gw)
    assert metric(samples, "gateway_publish_stale_total") == 6
    assert metric(samples, "gateway_publish_duplicates_total") == 1


async def test_an_array_answers_stale_and_duplicate_by_index(
    gateway_factory: Any, merchant: Any
) -> None:
    mid, _ = merchant
    gw = gateway_factory.start(config=DURABLE)
    status, _, reply = await post(gw, [
        event(mid, "completion", {"jobId": "b"}, key="k1"),
        event(mid, "completion", {"jobId": "b"}, key="k1"),
        event(mid, "progress", {"jobId": "b"}, key="k2"),  # stale; its key is remembered
        event(mid, "progress", {"jobId": "b"}, key="k2"),  # a repeat answers stale again
        event(mid, "stage", "plain text, no job", key="k3"),
    ])
    assert status == 200, reply
    ids = reply["ids"]
    assert ids[1] == ids[0] and ids[2] is None and ids[3] is None and ids[4]
    assert reply["stale"] == [2, 3] and reply["duplicate"] == [1]


async def test_a_key_repeated_in_an_array_and_across_requests_reaches_every_stream_once(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    async with open_stream(gw.stream_url(shop)) as s1, open_stream(gw.stream_url(shop)) as s2:
        for s in (s1, s2):
            await connected(s)
        status, _, first = await post(gw, [
            event(mid, "progress", {"jobId": "d", "percent": 10}, key="d-10"),
            event(mid, "progress", {"jobId": "d", "percent": 10}, key="d-10"),  # in the array
            event(mid, "stage", {"jobId": "e", "stage": "parse"}, key="e-parse"),
        ])
        assert status == 200, first
        d10, again, parse = first["ids"]
        assert again == d10 and first["duplicate"] == [1] and parse not in (None, d10)
        status, _, second = await post(gw, [
            event(mid, "stage", {"jobId": "e", "stage": "parse"}, key="e-parse"),  # across
            event(mid, "progress", {"jobId": "d", "percent": 10}, key="d-10"),
            event(mid, "completion", {"jobId": "e"}, key="e-done"),
        ])
        assert status == 200, second
        assert second["ids"][:2] == [parse, d10] and second["duplicate"] == [0, 1]
        done = second["ids"][2]
        status, _, later = await post(gw, event(mid, "stage", "later"))
        assert status == 200, later
        published = [d10, parse, done, later["id"]]
        for s in (s1, s2):  # a repeat would come before `later`, published after it
            assert [e.id for e in await s.events(len(published), 10)] == published
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.xlen(history_keys(mid)[0]) == len(published)
    finally:
        client.close()


async def test_the_python_helper_repeating_a_key_reaches_every_stream_once(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config=DURABLE)
    sync_client = redis.Redis.from_url(redis_server.url)
    async_client = aioredis.Redis.from_url(redis_server.url)
    settings = {"history": DURABLE["sse"]["history"], "ttl_s": DURABLE["redis"]["history_ttl"]}
    try:
        publisher = Publisher(sync_client, **settings)
        apublisher = AsyncPublisher(async_client, **settings)
        async with open_stream(gw.stream_url(shop)) as s1, \
                open_stream(gw.stream_url(shop)) as s2:
            for s in (s1, s2):
                await connected(s)
            data = {"jobId": "h", "percent": 10}
            first = publisher.publish(mid, "progress", data, key="h-10")
            assert first is not None
            assert publisher.publish(mid, "progress", data, key="h-10") == first
            assert await apublisher.publish(mid, "progress", data, key="h-10") == first
            batch = await apublisher.publish_many([
                Publication(mid, "stage", b'{"jobId":"i","stage":"a"}', key="i-a"),
                Publication(mid, "stage", b'{"jobId":"i","stage":"a"}', key="i-a"),
                Publication(mid, "progress", b'{"jobId":"h","percent":10}', key="h-10"),
            ])
            stage = batch[0].id
            assert stage not in (None, first) and batch[1:] == [
                Outcome(stage, duplicate=True), Outcome(first, duplicate=True)]
            later = await apublisher.publish(mid, "completion", {"jobId": "h"}, key="h-done")
            assert later not in (None, first, stage)
            for s in (s1, s2):  # a repeat would come before `later`, published after it
                assert [e.id for e in await s.events(3, 10)] == [first, stage, later]
    finally:
        sync_client.close()
        await async_client.aclose()


async def test_a_key_publishes_again_once_redis_idempotency_ttl_has_passed(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    mid, shop = merchant
    gw = gateway_factory.start(config={**DURABLE, "redis": {**DURABLE["redis"],
                                                            "idempotency_ttl": 1}})
    client = aioredis.Redis.from_url(redis_server.url)
    body = event(mid, "stage", {"jobId": "g", "stage": "sync"}, key="g-sync")
    remembered = idempotency_key(mid, "g-sync")
    try:
        async with open_stream(gw.stream_url(shop)) as s:
            await connected(s)
            status, _, reply = await post(gw, [body, body])  # one script run: no clock between
            assert status == 200, reply
            first = reply["ids"][0]
            assert reply["ids"] == [first, first] and reply["duplicate"] == [1], reply
            ttl = await client.pttl(remembered)
            assert ttl == -2 or 0 < ttl <= 1000, ttl  # 1 s (-2: gone already), not 600 s

            async def forgotten() -> bool:
                return await client.exists(remembered) == 0

            await wait_for(forgotten, timeout=10, message=f"({remembered} to expire)")
            status, _, again = await post(gw, body)
            assert status == 200 and "duplicate" not in again, again
            assert again["id"] not in (None, first)
            assert [e.id for e in await s.events(2, 10)] == [first, again["id"]]
    finally:
        await client.aclose()


@pytest.mark.parametrize(("extra", "field"), [
    ({"seq": -1}, "seq"), ({"seq": 1.5}, "seq"), ({"seq": True}, "seq"), ({"seq": "3"}, "seq"),
    ({"key": ""}, "key"), ({"key": "a b"}, "key"), ({"key": "x" * 129}, "key"),
    ({"key": 7}, "key"),
])
async def test_a_bad_seq_or_key_is_refused_and_publishes_nothing(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer, extra: dict[str, Any],
    field: str,
) -> None:
    mid, _ = merchant
    gw = gateway_factory.start(config=DURABLE)
    items = [event(mid, "stage", "ok"), event(mid, "stage", "x", **extra)]
    status, _, reply = await post(gw, items)
    assert (status, reply["error"]) == (400, "invalid_request"), reply
    assert f"[1].{field}" in reply["message"]
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.exists(history_keys(mid)[0]) == 0
    finally:
        client.close()


def test_the_cli_prints_the_id_the_first_id_or_stale(redis_server: RedisServer) -> None:
    mid, _ = unique_merchant("jobcli")
    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"}

    def publish(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "publish", mid, *args], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr  # and no DATABASE_URL needed to publish
        return done.stdout.strip()

    first = publish("progress", '{"jobId": "c", "percent": 10}', "--seq", "3", "--key", "c-10")
    assert publish("progress", '{"jobId": "c", "percent": 10}', "--seq", "3", "--key",
                   "c-10") == first
    assert publish("progress", '{"jobId": "c", "percent": 9}', "--seq", "2") == "stale"
    assert publish("progress", '{"jobId": "c", "percent": 20}', "--seq", "4") not in (
        "stale", first)
    bad = subprocess.run([sys.executable, "-m", "gateway", "publish", mid, "stage", "x", "--seq",
                          "-1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "--seq" in bad.stderr


async def test_the_python_helper_takes_seq_and_key(redis_server: RedisServer) -> None:
    mid, _ = unique_merchant("jobpy")
    sync_client = redis.Redis.from_url(redis_server.url)
    async_client = aioredis.Redis.from_url(redis_server.url)
    try:
        publisher, apublisher = Publisher(sync_client), AsyncPublisher(async_client)
        first = publisher.publish(mid, "progress", {"jobId": 9, "percent": 1}, seq=1, key="p1")
        assert first is not None
        assert await apublisher.publish(mid, "progress", {"jobId": 9}, seq=1, key="p1") == first
        assert await apublisher.publish(mid, "progress", {"jobId": "9"}, seq=1) is None  # stale
        assert publisher.publish(mid, "completion", {"jobId": 9}, seq=2) not in (None, first)
        assert publisher.publish(mid, "progress", {"jobId": 9}, seq=3) is None  # ended
    finally:
        sync_client.close()
        await async_client.aclose()


@pytest.mark.parametrize(("publication", "message"), [
    (Publication("m", "stage", b"x", seq=10**15), "seq"),
    (Publication("m", "stage", b"x", seq=-1), "seq"),
    (Publication("m", "stage", b"x", key="a b"), "key"),
    (Publication("m", "stage", b"x", job="j" * 129), "job"),
])
async def test_the_python_helper_refuses_what_the_script_would_before_sending(
    redis_server: RedisServer, publication: Publication, message: str
) -> None:
    """The script refuses a whole run for a bad seq, key or job: one bad item of a
    `publish_many` would take up to 100 good ones with it. The helper raises
    ValueError, naming the field, and sends nothing."""
    mid, _ = unique_merchant("jobbad")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        publisher = AsyncPublisher(client)
        good = Publication(mid, "stage", b"ok")
        with pytest.raises(ValueError, match=message):
            await publisher.publish_many([good, publication._replace(merchant_id=mid)])
        assert await client.exists(history_keys(mid)[0]) == 0
    finally:
        await client.aclose()


async def test_a_job_of_128_multibyte_characters_and_a_string_data_object_are_jobs(
    gateway_factory: Any, merchant: Any, redis_server: RedisServer
) -> None:
    """A job is 1-128 characters: "€" x 128 is 384 bytes, which the script used to
    refuse as bad ARGV (503 redis_error for the whole array, retried in vain). And a
    `data` string whose text is a JSON object is that object to the browser: a job."""
    mid, _ = merchant
    gw = gateway_factory.start(config=DURABLE)
    euro = "€" * 128
    status, _, reply = await post(gw, [
        event(mid, "stage", "plain text"),
        event(mid, "progress", {"jobId": euro, "percent": 1}),
        event(mid, "progress", '{"jobId": "as-text", "percent": 2}'),
    ])
    assert status == 200 and None not in reply["ids"], reply
    client = redis.Redis.from_url(redis_server.url)
    try:
        jobs = client.hkeys(job_state_keys(mid)[0])
    finally:
        client.close()
    assert sorted(j.decode() for j in jobs) == sorted([euro, "as-text"])
    status, _, reply = await post(gw, event(mid, "completion", '{"jobId": "as-text"}'))
    assert status == 200
    status, _, reply = await post(gw, event(mid, "stage", '{"jobId": "\\ud800"}'))
    assert status == 200, reply  # a lone surrogate names no job (it was a 500)
    status, _, reply = await post(gw, event(mid, "progress", {"jobId": "as-text"}))
    assert reply == {"id": None, "stale": True}
