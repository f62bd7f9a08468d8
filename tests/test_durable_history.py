"""gateway/durable/publish.lua and DurableHistory against a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from support import over_maxmemory, unique_merchant, wait_for

from gateway.broker.connection import make_client
from gateway.durable.history import DurableHistory
from gateway.durable.history_checks import first_lost, holds_many, missed
from gateway.durable.ids import (
    DurableEvent,
    DurableId,
    encode_envelope,
    history_keys,
    idempotency_key,
    job_state_keys,
    parse_envelope,
)
from gateway.durable.publisher import (
    BATCH,
    SCRIPT_SHA,
    AsyncPublisher,
    Outcome,
    PartialPublish,
    Publication,
)
from gateway.fanout.frames import event_frame
from tools.services import RedisServer


async def read_after(
    history: DurableHistory, merchant_id: str, last: DurableId, limit: int | None = None
) -> list[DurableEvent] | None:
    """The events after `last` from one read of the whole history, as the gateway reads it."""
    return (await history.read_all(merchant_id)).after(last, limit)


CHANNEL = "merchant:{merchant_id}:{event}"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


def make_history(client: aioredis.Redis, history: int = 5, ttl_s: int = 600) -> DurableHistory:
    return DurableHistory(client, channel=CHANNEL, history=history, ttl_s=ttl_s)


async def next_message(pubsub: aioredis.client.PubSub, within_s: float = 5) -> bytes:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            return bytes(msg["data"])
    raise TimeoutError("no message on the channel")


async def test_publish_assigns_increasing_ids_caps_history_and_sets_ttl(
    client: aioredis.Redis,
) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=3, ttl_s=600)
    ids = [await history.publish(mid, "progress", b"p%d" % i) for i in range(1, 6)]
    parsed = [DurableId.parse(i) for i in ids]
    assert all(p is not None for p in parsed), ids
    epochs = {p.epoch for p in parsed if p}
    assert len(epochs) == 1
    assert [p.offset for p in parsed if p] == [1, 2, 3, 4, 5]
    stream, meta = history_keys(mid)
    entries = await client.xrange(stream)
    assert [(e[0], e[1]) for e in entries] == [
        (b"0-3", {b"e": b"progress", b"d": b"p3"}),
        (b"0-4", {b"e": b"progress", b"d": b"p4"}),
        (b"0-5", {b"e": b"progress", b"d": b"p5"}),
    ]
    assert await client.hgetall(meta) == {b"epoch": epochs.pop().encode(), b"offset": b"5"}
    for key in (stream, meta):
        assert 590 <= await client.ttl(key) <= 600


async def test_envelope_reaches_a_plain_subscriber(client: aioredis.Redis) -> None:
    mid, _ = unique_merchant("dh")
    pubsub = client.pubsub()
    await pubsub.subscribe(f"merchant:{mid}:stage")
    try:
        payload = b'{"jobId":"j1"}\nline two \x00 raw'
        event_id = await make_history(client).publish(mid, "stage", payload)
        message = await next_message(pubsub)
        assert message == encode_envelope(event_id, payload)
        assert parse_envelope(message) == (event_id, payload)
    finally:
        await pubsub.aclose()


async def test_lost_meta_starts_a_new_epoch_and_old_ids_gap(client: aioredis.Redis) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client)
    first = DurableId.parse(await history.publish(mid, "progress", b"a"))
    await history.publish(mid, "progress", b"b")
    stream, meta = history_keys(mid)
    await client.delete(meta)  # e.g. evicted, or expired before the stream
    second = DurableId.parse(await history.publish(mid, "progress", b"c"))
    assert first and second and second.epoch != first.epoch and second.offset == 1
    assert [e[0] for e in await client.xrange(stream)] == [b"0-1"]  # old entries dropped
    assert await read_after(history, mid, first) is None
    assert await read_after(history, mid, second) == []


async def test_noscript_falls_back_to_eval(client: aioredis.Redis) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client)
    await client.script_flush()
    assert await client.script_exists(SCRIPT_SHA) == [False]
    one = await history.publish(mid, "progress", b"1")
    assert await client.script_exists(SCRIPT_SHA) == [True]  # EVAL cached it
    await client.script_flush()
    outcomes = await history.publish_many([(mid, "progress", b"2"), (mid, "stage", b"3")])
    many = [o.id for o in outcomes]
    ids = [DurableId.parse(i) for i in (one, *many)]
    assert [i.offset for i in ids if i] == [1, 2, 3]


async def test_several_runs_never_wait_on_the_script_cache(client: aioredis.Redis) -> None:
    """An array of several runs goes as EVAL: a run that met NOSCRIPT and was sent again
    after the others (another publisher may load the script between two runs of one
    pipeline) published out of order. One run still goes as EVALSHA."""
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=300)
    await client.script_flush()
    await client.config_resetstat()
    outcomes = await history.publish_many([(mid, "progress", b"%d" % i) for i in range(250)])
    offsets = [DurableId.parse(o.id or "").offset for o in outcomes]  # type: ignore[union-attr]
    assert offsets == list(range(1, 251))
    stats = await client.info("commandstats")
    assert "cmdstat_evalsha" not in stats, stats.get("cmdstat_evalsha")
    assert stats["cmdstat_eval"]["calls"] == 3


async def test_publish_many_keeps_order_across_merchants(client: aioredis.Redis) -> None:
    m1, _ = unique_merchant("dh")
    m2, _ = unique_merchant("dh")
    history = make_history(client, history=10)
    items = [(m1 if i % 2 else m2, "progress", b"%d" % i) for i in range(10)]
    ids = [o.id for o in await history.publish_many(items)]
    offsets = {m1: [], m2: []}  # type: dict[str, list[int]]
    epochs = {m1: set(), m2: set()}  # type: dict[str, set[str]]
    for (mid, _, _), text in zip(items, ids, strict=True):
        parsed = DurableId.parse(text)
        assert parsed is not None
        offsets[mid].append(parsed.offset)
        epochs[mid].add(parsed.epoch)
    assert offsets == {m1: [1, 2, 3, 4, 5], m2: [1, 2, 3, 4, 5]}
    assert len(epochs[m1]) == len(epochs[m2]) == 1
    assert epochs[m1] != epochs[m2]  # histories started in one run: an epoch each
    snapshot = await history.read_all(m1)
    assert [ev.payload for ev in snapshot.entries] == [b"1", b"3", b"5", b"7", b"9"]
    assert await history.publish_many([]) == []


@pytest.mark.parametrize("candidate", ["k" * 31 + "2", "k" * 30 + "1" + "2", "k" * 24 + "z2",
                                       "a1b2c3d4e5f6"])
async def test_every_history_a_run_starts_has_its_own_epoch(
    client: aioredis.Redis, candidate: str
) -> None:
    """Whatever the candidate (up to 32 characters), even when its tail looks like
    a count: a run starting 12 histories gives 12 epochs."""
    from gateway.durable.ids import script_args
    from gateway.durable.publisher import SCRIPT

    tag = unique_merchant("ep")[0]
    events = [(f"{tag}-{i}", "stage", b"x", None, None, None) for i in range(12)]
    keys, argv = script_args("merchant:{merchant_id}:{event}", events, history=10, ttl_s=60,
                             sharded=False, epoch=candidate)
    answers = await client.eval(SCRIPT, len(keys), *keys, *argv)
    epochs = [DurableId.parse(a.decode()).epoch for a in answers]  # type: ignore[union-attr]
    assert len(set(epochs)) == 12, epochs
    assert epochs[0] == candidate or len(candidate) > 24, epochs  # short ones kept
    assert all(len(e) <= 32 for e in epochs), epochs


async def test_read_after_bridges_or_reports_a_gap(client: aioredis.Redis) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=4)
    ids = [DurableId.parse(await history.publish(mid, "progress", b"%d" % i)) for i in range(6)]
    assert all(ids)
    last = ids[-1]
    assert last is not None
    got = await read_after(history, mid, DurableId(last.epoch, 3))
    assert got is not None
    assert [(ev.id, ev.event, ev.payload) for ev in got] == [
        (DurableId(last.epoch, 4), "progress", b"3"),
        (DurableId(last.epoch, 5), "progress", b"4"),
        (DurableId(last.epoch, 6), "progress", b"5"),
    ]
    assert await read_after(history, mid, DurableId(last.epoch, 2)) is not None  # 3..6 held
    assert await read_after(history, mid, DurableId(last.epoch, 1)) is None  # 2 trimmed
    assert await read_after(history, mid, last) == []
    assert await read_after(history, mid, DurableId(last.epoch, 7)) is None
    assert await read_after(history, mid, DurableId("other", 3)) is None
    assert await read_after(history, mid, DurableId(last.epoch, 3), limit=2) is None
    assert len(await read_after(history, mid, DurableId(last.epoch, 3), limit=3) or []) == 3
    unknown, _ = unique_merchant("dh")
    assert await read_after(history, unknown, last) is None
    snapshot = await history.read_all(unknown)
    assert (snapshot.epoch, snapshot.head, snapshot.entries) == (None, 0, ())


async def test_history_zero_keeps_nothing_but_still_numbers(client: aioredis.Redis) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=0)
    ids = [DurableId.parse(await history.publish(mid, "progress", b"x")) for _ in range(3)]
    assert [i.offset for i in ids if i] == [1, 2, 3]
    stream, _ = history_keys(mid)
    assert await client.exists(stream) == 0
    assert ids[2] is not None and ids[1] is not None
    assert await read_after(history, mid, ids[2]) == []
    assert await read_after(history, mid, ids[1]) is None


async def test_missed_says_whether_a_jump_skipped_subscribed_events(
    client: aioredis.Redis,
) -> None:
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=5)  # keeps :3 to :7
    events = ["stage", "stage", "log", "log", "stage", "stage", "stage"]
    ids = [DurableId.parse(await history.publish(mid, e, b"x")) for e in events]
    _, two, three, _, five, _, seven = ids
    assert two and three and five and seven
    ours = {"stage", "progress"}
    assert not await missed(client, mid, three, five, ours)  # skipped :3, :4: not ours
    assert await missed(client, mid, three, five, {"log"})
    assert not await missed(client, mid, five, five, ours)  # no jump
    assert await missed(client, mid, two, five, ours)  # :2 trimmed: cannot tell
    assert await missed(client, mid, DurableId("other", 5), seven, ours)  # another epoch


async def test_first_lost_finds_delivered_events_whose_ids_were_given_again(
    client: aioredis.Redis,
) -> None:
    """A failover: the promoted replica had the history up to :2; :3 and :4, delivered
    by the old primary, were lost, and the new primary gave their ids to other events."""
    mid, _ = unique_merchant("dh")
    history = make_history(client, history=5)
    ids = [DurableId.parse(await history.publish(mid, "stage", b"p%d" % n)) for n in (1, 2, 3, 4)]
    assert all(ids)
    delivered = [(d, event_frame(str(d), "stage", b"p%d" % d.offset))
                 for d in reversed(ids) if d][:3]  # :4, :3, :2, newest first
    assert await first_lost(client, mid, delivered) is None  # held as delivered

    stream, meta = history_keys(mid)
    kept = (await client.xrange(stream))[:2]
    await client.delete(stream)
    for entry_id, fields in kept:
        await client.xadd(stream, fields, id=entry_id)
    await client.hset(meta, "offset", 2)  # the replica's history: :1 and :2
    for n in (3, 4):  # the new primary gives :3 and :4 to other events
        assert await history.publish(mid, "stage", b"q%d" % n) == f"{ids[0].epoch}:{n}"
    assert await first_lost(client, mid, delivered) == ids[2]  # :3 and :4 lost: from :3

    await client.hset(meta, "epoch", "another")  # a new history: its ids are not ours
    assert await first_lost(client, mid, delivered) is None


def job_event(mid: str, key: str, event: str = "progress") -> Publication:
    return Publication(mid, event, b'{"jobId":"j"}', "j", None, key)


async def test_a_refused_keyed_publish_leaves_its_key_unused(client: aioredis.Redis) -> None:
    """The key is checked and recorded by the script's first write (SET NX GET): a
    refusal before or after it leaves no key behind, and a used key answers first."""
    mid, _ = unique_merchant("dh")
    publisher = AsyncPublisher(client)
    stream, meta = history_keys(mid)
    first = await publisher.send(job_event(mid, "used"))
    # a key of the wrong type: refused with WRONGTYPE, for a new event and a stale one
    await client.hset(idempotency_key(mid, "odd"), "a", "b")
    for event in ("progress", "completion"):
        with pytest.raises(ResponseError, match=r"^WRONGTYPE publish\.lua: .* is a hash"):
            await publisher.send(job_event(mid, "odd", event))
    assert first.id is not None
    assert await client.hgetall(meta) == {b"epoch": first.id.split(":")[0].encode(),
                                          b"offset": b"1"}
    # the stream already holds the next id (not written by the script): refused after
    # the key was recorded, so the script takes the key back
    await client.xadd(stream, {"e": "x"}, id="0-50")
    with pytest.raises(ResponseError, match="equal or smaller"):
        await publisher.send(job_event(mid, "new"))
    assert await client.exists(idempotency_key(mid, "new")) == 0
    assert await publisher.send(job_event(mid, "used")) == Outcome(first.id, duplicate=True)
    await client.delete(stream)
    second = await publisher.send(job_event(mid, "new"))
    assert second.id is not None and not second.duplicate
    assert await client.get(idempotency_key(mid, "new")) == second.id.encode()
    assert 590 <= await client.ttl(idempotency_key(mid, "new")) <= 600


async def _over_maxmemory(client: aioredis.Redis) -> tuple[list[bytes], list[Any]]:
    """Put Redis 1 MiB over its `maxmemory` (noeviction); its keys and their dumps."""
    await over_maxmemory(client)
    keys = sorted(await client.keys("*"))
    return keys, [await client.dump(k) for k in keys]


async def test_over_maxmemory_a_used_key_answers_and_a_new_one_writes_nothing(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory()
    client = aioredis.Redis.from_url(redis.url)
    try:
        mid, _ = unique_merchant("dh")
        publisher = AsyncPublisher(client)
        first = await publisher.send(job_event(mid, "used"))
        stale = await publisher.send(Publication(mid, "completion", b"{}", "done", None, "s1"))
        assert stale.id is not None  # job "done" ended: its next event is stale
        keys, state = await _over_maxmemory(client)
        for publication in (job_event(mid, "new"), job_event(mid, "new", "completion"),
                            Publication(mid, "progress", b"{}", "done", None, "s2"),
                            Publication(unique_merchant("dh")[0], "stage", b"x", None, None, "k")):
            with pytest.raises(OutOfMemoryError):
                await publisher.send(publication)
        assert await publisher.send(job_event(mid, "used")) == Outcome(first.id, duplicate=True)
        assert sorted(await client.keys("*")) == keys
        assert [await client.dump(k) for k in keys] == state, "a refused publish wrote"
        await client.config_set("maxmemory", "0")
        assert (await publisher.send(job_event(mid, "new"))).id is not None
        assert await publisher.send(Publication(mid, "progress", b"{}", "done", None, "s2")) \
            == Outcome(None, stale=True)
    finally:
        await client.aclose()


async def test_concurrent_publishers_never_share_an_id(redis_server: RedisServer) -> None:
    mid, _ = unique_merchant("dh")
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(4)]
    try:
        histories = [make_history(c, history=1000) for c in clients]

        async def run(h: DurableHistory, n: int) -> list[str]:
            return [await h.publish(mid, "progress", b"%d" % n) for _ in range(50)]

        results = await asyncio.gather(*(run(h, n) for n, h in enumerate(histories)))
    finally:
        for c in clients:
            await c.aclose()
    offsets = sorted(DurableId.parse(i).offset for r in results for i in r)  # type: ignore[union-attr]
    assert offsets == list(range(1, 201))


async def test_close_closes_the_client(redis_server: RedisServer, client: aioredis.Redis) -> None:
    name = unique_merchant("close")[0]
    history = make_history(aioredis.Redis.from_url(redis_server.url, client_name=name))
    await history.publish(name, "progress", b"x")

    async def held() -> int:
        return sum(c.get("name") == name for c in await client.client_list())

    async def released() -> bool:
        return await held() == 0

    assert await held() == 1
    await history.close()
    await wait_for(released, timeout=5, message="the history's connection closed")


async def test_job_state_keeps_the_most_recently_updated_jobs(client: aioredis.Redis) -> None:
    """Past `jobs_kept` jobs, a new job evicts the least recently updated ones; an
    update of a kept job evicts nothing."""
    mid, _ = unique_merchant("dh")
    publisher = AsyncPublisher(client, jobs_kept=3)
    jobs, jobids = job_state_keys(mid)

    async def publish(job: str) -> None:
        assert (await publisher.send(Publication(mid, "progress", b"{}", job))).id is not None

    for job in ("a", "b", "c", "a", "d"):  # "b" is now the least recently updated
        await publish(job)
    assert sorted(await client.hkeys(jobs)) == [b"a", b"c", b"d"]
    assert await client.zrange(jobids, 0, -1) == [b"c", b"a", b"d"]
    await publish("c")  # an update: nothing evicted
    assert await client.zrange(jobids, 0, -1) == [b"a", b"d", b"c"]
    await client.zadd(jobids, {"x": 0, "y": 0})  # more entries than kept: a new job trims all
    await publish("e")
    assert await client.zrange(jobids, 0, -1) == [b"d", b"c", b"e"]
    assert sorted(await client.hkeys(jobs)) == [b"c", b"d", b"e"]


async def test_job_keys_of_the_wrong_type_refuse_a_job_event_and_write_nothing(
    client: aioredis.Redis,
) -> None:
    publisher = AsyncPublisher(client)
    for wrong in (0, 1):
        mid, _ = unique_merchant("dh")
        first = await publisher.send(Publication(mid, "progress", b"{}", "j"))
        assert first.id is not None
        key = job_state_keys(mid)[wrong]
        await client.delete(key)
        await client.set(key, "not a hash or zset")
        keys = sorted(await client.keys(f"*{{{mid}}}*"))
        state = [await client.dump(k) for k in keys]
        with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
            await publisher.send(Publication(mid, "progress", b"{}", "j"))
        assert [await client.dump(k) for k in keys] == state, "a refused publish wrote"
        # an event of no job does not touch the job state: published
        assert (await publisher.send(Publication(mid, "stage", b"x"))).id is not None


async def test_a_batch_runs_once_per_hundred_events_and_answers_each(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """publish_many sends one script run per BATCH events (several merchants in one run
    on a single Redis); each event gets its own answer, a refused one does not stop
    the others, and each merchant's ids follow its order in the batch."""
    redis = redis_factory()
    client = aioredis.Redis.from_url(redis.url)
    try:
        publisher = AsyncPublisher(client)
        mids = [unique_merchant("dh")[0] for _ in range(3)]
        first = await publisher.send(Publication(mids[0], "progress", b"{}", "j", None, "k"))
        await publisher.send(Publication(mids[2], "stage", b"x"))
        await client.delete(job_state_keys(mids[2])[0])
        await client.set(job_state_keys(mids[2])[0], "not a hash")
        items = [Publication(mids[n % 3], "progress", b'{"n":%d}' % n, "j", None,
                             "k" if n == 0 else None) for n in range(BATCH + 50)]
        await client.config_resetstat()
        with pytest.raises(PartialPublish, match=r"^WRONGTYPE") as refused:
            await publisher.publish_many(items)
        stats = await client.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 2  # 150 events: two runs (EVAL: see publisher)
        ids = refused.value.ids
        assert ids[0] is None  # a repeated key: the first publish's answer, not a new id
        assert all(i is None for i in ids[2::3])  # mids[2]'s job state is of the wrong type
        for m in (0, 1):
            offsets = [DurableId.parse(i).offset for i in ids[m::3] if i]  # type: ignore[union-attr]
            assert offsets == list(range(1 + (m == 0), 1 + (m == 0) + len(offsets)))
        assert len(offsets) == 50 and first.id is not None
        assert await client.xlen(history_keys(mids[2])[0]) == 1  # its first event only
    finally:
        await client.aclose()


async def test_a_batch_started_over_maxmemory_writes_nothing(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory()
    client = aioredis.Redis.from_url(redis.url)
    try:
        publisher = AsyncPublisher(client)
        mid, _ = unique_merchant("dh")
        await publisher.send(Publication(mid, "progress", b"{}", "j"))
        keys, state = await _over_maxmemory(client)
        items = [(m, "stage", b"x") for m in (mid, unique_merchant("dh")[0], mid)]
        with pytest.raises(PartialPublish) as refused:
            await publisher.publish_many(items)
        assert refused.value.ids == [None, None, None]
        assert isinstance(refused.value.error, OutOfMemoryError)
        assert sorted(await client.keys("*")) == keys
        assert [await client.dump(k) for k in keys] == state, "a refused batch wrote"
    finally:
        await client.aclose()


async def test_every_read_answers_on_a_pooled_connection_redis_closed(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """After a Redis restart each pooled connection's next command meets a closed
    socket. The gateway's client retries nothing (a publish must not run twice), so
    the first read on it failed: a reconnecting tab got `resync` instead of its
    replay, or no snapshot. Reads are sent once more on a fresh connection."""
    redis = redis_factory()
    history = DurableHistory(make_client(redis.url, 1), channel=CHANNEL, history=5, ttl_s=600)
    client = history._client
    first = DurableId.parse(await history.publish("m1", "progress", b"{}"))
    assert first is not None
    reads: dict[str, Callable[[], Any]] = {  # each, by name, must answer once restarted
        "read_all": lambda: history.read_all("m1"),
        "read_head": lambda: history.read_head("m1"),
        "read_jobs": lambda: history.read_jobs("m1"),
        "holds_many": lambda: holds_many(client, [("m1", first, "progress", b"{}")]),
        "missed": lambda: missed(client, "m1", first, DurableId(first.epoch, first.offset + 2),
                                 ("progress",)),
    }
    try:
        for name, read in reads.items():
            await read()  # the pool's one connection, open
            redis.restart()
            try:
                await read()
            except RedisConnectionError as exc:  # "Connection closed by server", before
                raise AssertionError(f"{name} failed after the restart") from exc
    finally:
        await history.close()
