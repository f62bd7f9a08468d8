"""Durable publishing for Python backends, on redis-py (see docs/publishing.md).

    from redis import Redis
    from gateway.durable.publisher import Publisher

    publisher = Publisher(Redis.from_url("redis://localhost:6379/0"))
    event_id = publisher.publish("m1", "progress", {"jobId": "po-42", "percent": 40})
    publisher.publish("m1", "progress", {"jobId": "po-42", "percent": 50}, seq=5, key="po-42:50")

`publish` returns the event id; with `key`, a repeat returns the first publish's
id; None when the event is stale (its job ended, or `seq` is not above the job's).
A `seq` outside 0..10**15-1, a bad `key` or a `job` not of 1-128 characters raises
ValueError before anything is sent.
`AsyncPublisher` does the same on `redis.asyncio.Redis`. Both run the script
the gateway ships, `gateway/durable/publish.lua`, with EVALSHA (EVAL when the
server does not hold it yet). Pass the gateway's `redis.channel`,
`sse.history`, `redis.history_ttl`, `redis.cluster`, `sse.job_key`,
`sse.snapshot_jobs` and `redis.idempotency_ttl` when they differ from the
defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from .ids import encode_data, script_args
from .jobs import JOB_MAX, SEQ_MAX, job_in_data, job_in_payload, valid_key, valid_seq

__all__ = [
    "BATCH", "DEFAULT_CHANNEL", "DEFAULT_HISTORY", "DEFAULT_TTL_S", "SCRIPT", "SCRIPT_PATH",
    "SCRIPT_SHA", "AsyncPublisher", "Outcome", "PartialPublish", "Publication", "Publisher",
]

SCRIPT_PATH = Path(__file__).resolve().parent / "publish.lua"
SCRIPT = SCRIPT_PATH.read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()

DEFAULT_CHANNEL = "merchant:{merchant_id}:{event}"
DEFAULT_HISTORY = 100
DEFAULT_TTL_S = 86400
DEFAULT_JOB_KEY = "jobId"
DEFAULT_JOBS_KEPT = 100
DEFAULT_IDEMPOTENCY_TTL_S = 600


class Publication(NamedTuple):
    """One durable publish: the event, and optionally its job, `seq` and idempotency
    `key` (the job is read from a JSON-object payload when not given; '' is none)."""

    merchant_id: str
    event: str
    payload: bytes
    job: str | None = None
    seq: int | None = None
    key: str | None = None


class Outcome(NamedTuple):
    """What a publish did: its id (for a duplicate, the first publish's; None when
    stale), and whether it was stale or a duplicate of an earlier `key`."""

    id: str | None
    stale: bool = False
    duplicate: bool = False


Item = Publication | tuple[str, str, bytes]


BATCH = 100
"""Events per script run at most: one run holds Redis for about 30 us per event."""

Run = tuple[list[int], list[Any]]
"""One script run: the indexes of the items it publishes, and [numkeys, *KEYS, *ARGV]."""


class _Settings:
    """What every publish passes besides the events: the gateway's config values."""

    def __init__(self, channel: str, history: int, ttl_s: int, sharded: bool, job_key: str,
                 jobs_kept: int, idempotency_ttl_s: int) -> None:
        if history < 0 or ttl_s < 1 or jobs_kept < 1 or idempotency_ttl_s < 1:
            raise ValueError("history must be >= 0; ttl_s, jobs_kept and "
                             "idempotency_ttl_s >= 1")
        self.channel = channel
        self.history = history
        self.ttl_s = ttl_s
        self.sharded = sharded
        self.job_key = job_key
        self.jobs_kept = jobs_kept
        self.idempotency_ttl_s = idempotency_ttl_s

    def runs(self, items: Sequence[Item], per_merchant: bool) -> list[Run]:
        """The script runs that publish `items`, in order: runs of up to `BATCH`
        events; with `per_merchant` (Redis Cluster: a run's keys share one slot)
        each run holds one merchant's events, so only each merchant's order is kept."""
        publications = [self._publication(item) for item in items]
        if per_merchant:
            by_merchant: dict[str, list[int]] = {}
            for i, publication in enumerate(publications):
                by_merchant.setdefault(publication.merchant_id, []).append(i)
            groups = list(by_merchant.values())
        else:
            groups = [list(range(len(publications)))]
        runs: list[Run] = []
        for group in groups:
            for start in range(0, len(group), BATCH):
                indexes = group[start:start + BATCH]
                keys, argv = script_args(
                    self.channel, [publications[i] for i in indexes], history=self.history,
                    ttl_s=self.ttl_s, sharded=self.sharded, jobs_kept=self.jobs_kept,
                    idempotency_ttl_s=self.idempotency_ttl_s,
                )
                runs.append((indexes, [len(keys), *keys, *argv]))
        return runs

    def _publication(self, item: Item) -> Publication:
        """The item as the script takes it; ValueError (nothing sent) for a `job`, `seq`
        or `key` the script would refuse, with the whole run it is in."""
        pub = item if isinstance(item, Publication) else Publication(*item)
        if pub.job is None:  # not decided by the caller ('' is none): the payload's
            pub = pub._replace(job=job_in_payload(pub.payload, self.job_key) or "")
        elif pub.job and not 1 <= len(pub.job) <= JOB_MAX:
            raise ValueError(f"job must be 1-{JOB_MAX} characters")
        if pub.seq is not None and not valid_seq(pub.seq):
            raise ValueError(f"seq must be an integer from 0 to {SEQ_MAX}")
        if pub.key is not None and not valid_key(pub.key):
            raise ValueError("key must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return pub


def outcome(reply: Any) -> Outcome:
    """The script's answer: an id, "!stale", or "!dup:" + the first answer."""
    text = _text(reply)
    duplicate = text.startswith("!dup:")
    if duplicate:
        text = text[len("!dup:"):]
    if text == "!stale":
        return Outcome(None, stale=True)  # a repeat of a stale publish is stale again
    return Outcome(text, duplicate=duplicate)


class PartialPublish(ResponseError):
    """Redis refused some items of a batch; the others were published.

    `ids` holds each item's id, None where it was refused; the refusal of the
    first refused item is the cause (`__cause__`) and its text the message.
    """

    def __init__(self, ids: list[str | None], error: ResponseError) -> None:
        super().__init__(str(error))
        self.ids = ids
        self.error = error
        self.__cause__ = error


def _text(reply: Any) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)


class _Publisher:
    """The client and the gateway's config values every publish passes to the script."""

    def __init__(
        self,
        client: Any,  # redis.Redis or RedisCluster; their asyncio twins for AsyncPublisher
        *,
        channel: str = DEFAULT_CHANNEL,
        history: int = DEFAULT_HISTORY,
        ttl_s: int = DEFAULT_TTL_S,
        sharded: bool = False,
        job_key: str = DEFAULT_JOB_KEY,
        jobs_kept: int = DEFAULT_JOBS_KEPT,
        idempotency_ttl_s: int = DEFAULT_IDEMPOTENCY_TTL_S,
    ) -> None:
        self._client = client
        self._settings = _Settings(channel, history, ttl_s, sharded, job_key, jobs_kept,
                                   idempotency_ttl_s)
        self._per_merchant = sharded or isinstance(client, (RedisCluster, AsyncRedisCluster))

    def _one(self, publication: Item) -> list[Any]:
        """[numkeys, *KEYS, *ARGV] of the run that publishes one item."""
        ((_, call),) = self._settings.runs([publication], per_merchant=False)
        return call


def _only(reply: list[Any]) -> Outcome:
    """The outcome of a run of one event; Redis's refusal of it raised."""
    (answer,) = reply
    if isinstance(answer, Exception):
        raise answer
    return outcome(answer)


class Publisher(_Publisher):
    """Durable publish over a synchronous `redis.Redis` (or `RedisCluster`) client."""

    def publish(self, merchant_id: str, event: str, data: Any, *,
                seq: int | None = None, key: str | None = None) -> str | None:
        """Record and publish `data` (a string as text, else compact JSON); its id
        (see the module docstring for `seq`, `key` and None)."""
        payload = encode_data(data)
        job = job_in_data(data, payload, self._settings.job_key)
        return self.send(Publication(merchant_id, event, payload, job, seq, key)).id

    def send(self, publication: Item) -> Outcome:
        """One publish with its payload bytes as given; what it did."""
        call = self._one(publication)
        try:
            reply = self._client.evalsha(SCRIPT_SHA, *call)
        except NoScriptError:
            reply = self._client.eval(SCRIPT, *call)
        return _only(reply)


class AsyncPublisher(_Publisher):
    """Durable publish over `redis.asyncio.Redis`; also the gateway's own publisher."""

    async def publish(self, merchant_id: str, event: str, data: Any, *,
                      seq: int | None = None, key: str | None = None) -> str | None:
        """Record and publish `data` (a string as text, else compact JSON); its id
        (see the module docstring for `seq`, `key` and None)."""
        payload = encode_data(data)
        job = job_in_data(data, payload, self._settings.job_key)
        return (await self.send(Publication(merchant_id, event, payload, job, seq, key))).id

    async def send(self, publication: Item) -> Outcome:
        """One publish with its payload bytes as given; what it did."""
        reply = await self._run(self._one(publication))
        if isinstance(reply, ResponseError):
            raise reply  # the whole run refused
        return _only(reply)

    async def publish_many(self, items: Sequence[Item]) -> list[Outcome]:
        """Publish items in order over one pipeline of script runs (up to `BATCH`
        events each; on Redis Cluster one merchant's per run, so only each merchant's
        order is kept); what each did.

        Not a transaction: when Redis refuses some items (an error reply: out of
        memory, a key of the wrong type) the others are still published, and
        `PartialPublish` carries each item's id or None. One run goes as EVALSHA, sent
        again as EVAL on NOSCRIPT (the script cache was flushed, or a failover's new
        primary never loaded it). Several go as EVAL, the script itself: a run sent
        again after the others would publish out of order (another publisher may load
        the script between two runs of one pipeline); hashing it costs Redis well
        under 1 us per event of a full run. A connection fault is raised as it is: then
        what was published is unknown.
        """
        runs = self._settings.runs(items, self._per_merchant)
        calls = [call for _, call in runs]
        if len(calls) == 1:  # no pipeline: one costs redis-py about 40 us more per call
            replies = [await self._run(calls[0])]
        else:
            replies = await self._pipeline(calls)
        answers: list[Any] = [None] * len(items)
        for (indexes, _), reply in zip(runs, replies, strict=True):
            if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
                raise reply  # a connection fault: the outcome of every item is unknown
            each = [reply] * len(indexes) if isinstance(reply, ResponseError) else reply
            for i, answer in zip(indexes, each, strict=True):
                answers[i] = answer
        outcomes = [None if isinstance(a, Exception) else outcome(a) for a in answers]
        errors = [a for a in answers if isinstance(a, ResponseError)]
        if errors:
            ids = [o.id if o is not None and not o.duplicate else None for o in outcomes]
            raise PartialPublish(ids, errors[0])
        return [o for o in outcomes if o is not None]

    async def _run(self, call: list[Any]) -> Any:
        """One run's reply, its error reply as the exception (as a pipeline gives it)."""
        try:
            try:
                return await self._client.evalsha(SCRIPT_SHA, *call)
            except NoScriptError:
                return await self._client.eval(SCRIPT, *call)
        except ResponseError as refused:  # the whole run refused: nothing written
            return refused

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.execute_command("EVAL", SCRIPT, *call)  # cluster blocks .eval
            return list(await pipe.execute(raise_on_error=False))
