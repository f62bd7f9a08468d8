"""The job state in Redis: it expires with the history, and costs what
docs/publishing.md ("Redis keys and memory") says (`MEMORY USAGE`, Redis 7.0).

Run with -s to print the measured figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from support import unique_merchant

from gateway.durable.ids import history_keys, idempotency_key, job_state_keys
from gateway.durable.publisher import Publisher
from tools.services import RedisServer

TTL_S = 3600
IDEMPOTENCY_TTL_S = 120


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


def _publisher(client: redis.Redis) -> Publisher:
    return Publisher(client, ttl_s=TTL_S, idempotency_ttl_s=IDEMPOTENCY_TTL_S)


def _payload(job: int, size: int) -> dict[str, object]:
    """A job event whose compact JSON is `size` bytes."""
    head = {"jobId": f"job-{job:04d}", "pad": ""}
    pad = size - len('{"jobId":"job-0000","pad":""}')
    return {**head, "pad": "x" * pad}


def _state_bytes(client: redis.Redis, merchant_id: str) -> int:
    return sum(int(client.memory_usage(key, samples=0) or 0)
               for key in job_state_keys(merchant_id))


def test_the_job_state_expires_with_the_history(client: redis.Redis) -> None:
    mid, _ = unique_merchant("js")
    publisher = _publisher(client)
    publisher.publish(mid, "progress", {"jobId": "a", "percent": 10})
    for key in job_state_keys(mid):
        assert 0 < client.ttl(key) <= TTL_S, key
        client.expire(key, 5)
    publisher.publish(mid, "stage", {"step": "no job"})  # any durable publish refreshes it
    for key in job_state_keys(mid):
        assert client.ttl(key) > TTL_S - 60, key
    publisher.publish(mid, "progress", {"jobId": "a", "percent": 20}, key="k-20")
    assert 0 < client.ttl(idempotency_key(mid, "k-20")) <= IDEMPOTENCY_TTL_S


@pytest.mark.parametrize(
    ("jobs", "size", "documented"),
    [(20, 60, 3_400), (100, 60, 16_000), (100, 500, 70_000)],
)
def test_the_job_state_costs_what_the_docs_say(
    client: redis.Redis, jobs: int, size: int, documented: int
) -> None:
    mid, _ = unique_merchant("js")
    publisher = _publisher(client)
    for job in range(jobs):
        publisher.publish(mid, "progress", _payload(job, size))
    measured = _state_bytes(client, mid)
    print(f"\njob state: {jobs} jobs of {size}-byte payloads: {measured:,} B "
          f"({measured / jobs:.0f} B per job; documented {documented:,} B)")
    assert abs(measured - documented) <= 0.25 * documented, (measured, documented)


def test_an_idempotency_key_costs_about_140_bytes(client: redis.Redis) -> None:
    mid, _ = unique_merchant("js")
    _publisher(client).publish(mid, "progress", {"jobId": "a"}, key="order-1234:progress-40")
    measured = int(client.memory_usage(idempotency_key(mid, "order-1234:progress-40"),
                                       samples=0) or 0)
    print(f"\nidempotency key: {measured} B")
    assert abs(measured - 140) <= 0.25 * 140, measured


def test_a_cap_lowered_far_below_the_state_trims_it_in_one_run(client: redis.Redis) -> None:
    """`sse.snapshot_jobs` lowered to 100 under a merchant with 9,000 jobs: the next new
    job trims 8,901 at once. Lua's unpack takes about 8,000 values: one HDEL of them all
    failed after the run had written and published, so the publish answered an error
    for an event that went out (and left the job index and hash apart)."""
    mid, _ = unique_merchant("js")
    many = Publisher(client, ttl_s=TTL_S, jobs_kept=10_000)
    many.publish(mid, "progress", {"jobId": "first"})
    jobs, jobids = job_state_keys(mid)
    epoch = client.hget(history_keys(mid)[1], "epoch").decode()
    pipe = client.pipeline(transaction=False)
    for n in range(2, 9_001):  # as the script records them, without 9,000 runs
        pipe.hset(jobs, f"j{n}", f"{epoch}:1\n\n0\nprogress\n{{\"jobId\":\"j{n}\"}}")
        pipe.zadd(jobids, {f"j{n}": 1})
    pipe.execute()
    assert client.hlen(jobs) == 9_000
    event_id = _publisher(client).publish(mid, "progress", {"jobId": "new"})
    assert event_id is not None
    assert (client.hlen(jobs), client.zcard(jobids)) == (100, 100)
    assert client.hexists(jobs, "new")
