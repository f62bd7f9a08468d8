"""MerchantDirectory: shop domain -> merchant id, from PostgreSQL through aiopg.

The only module that knows aiopg. Answers are cached (positive `cache_ttl`,
negative `negative_cache_ttl`); concurrent lookups of one shop share one query;
a shop not in the cache spends a token of `server.max_new_streams_per_s`,
waiting for it up to `_NEW_LOOKUP_WAIT_S`; while PostgreSQL is unreachable a
previously verified shop is still served from its (expired) cache entry, and
an unknown one gets `UnavailableError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiopg
import psycopg2

from ..config import PostgresConfig
from ..errors import UnavailableError, UnknownMerchantError
from ..runtime import deadlines
from ..runtime.single_flight import SingleFlight
from ..runtime.token_bucket import TokenBucket

__all__ = ["Merchant", "MerchantDirectory"]

log = logging.getLogger(__name__)

_MAX_CACHE = 100_000
_NEW_LOOKUP_WAIT_S = 2.0  # longest a new shop's lookup waits for its token
_QUEUE_CAP_S = 30.0  # a lookup queued behind answered ones waits at most this long
_ACQUIRE_TIMEOUTS = 4  # aiopg's own (wall clock) timeout, in query timeouts
_FIRST = asyncio.FIRST_COMPLETED
# Connectivity faults. RuntimeError: aiopg under uvloop can fail a connect to a dead
# server with "unable to perform operation on <UVPoll closed=True>" (aio-libs/aiopg#909).
_FAULTS = (OSError, RuntimeError, psycopg2.OperationalError, psycopg2.InterfaceError)


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    shop: str


@dataclass(slots=True)
class _Cached:
    merchant: Merchant | None
    expires_at: float


class MerchantDirectory:
    def __init__(self, cfg: PostgresConfig, new_lookups_per_s: float = 0) -> None:
        self._cfg = cfg
        self._new_lookups = TokenBucket(new_lookups_per_s, _NEW_LOOKUP_WAIT_S)
        self._pool: aiopg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        # at most pool_max queries inside aiopg's pool: it hands its lock over once per
        # loop turn and queues each release behind every waiter inside it, so a storm of
        # lookups queues here instead, first come first served
        self._slots = asyncio.Semaphore(cfg.pool_max)
        self._cache: dict[str, _Cached] = {}
        self._lookups: SingleFlight[str, Merchant | None] = SingleFlight(self._lookup)
        self._rechecks: SingleFlight[str, Merchant | None] = SingleFlight(self._fetch)
        self._closing: set[asyncio.Future[None]] = set()
        self._running: set[asyncio.Task[Any]] = set()  # queries, awaited or abandoned
        self.healthy = False
        self._failing = False  # the last query failed: lookups do not wait long for the pool
        self._answers = 0  # queries answered: a queue that moves is not a stuck PostgreSQL

    async def verify(self, shop: str) -> Merchant:
        """The active merchant for `shop`, from cache or PostgreSQL."""
        now = time.monotonic()
        cached = self._cache.get(shop)
        if cached is not None and cached.expires_at > now:
            return self._answer(cached.merchant, shop)
        try:
            merchant = await self._shared_lookup(shop)
        except UnavailableError:
            if cached is not None and cached.merchant is not None:
                return cached.merchant  # stale but verified: PostgreSQL is down
            raise
        return self._answer(merchant, shop)

    async def recheck(self, shop: str) -> Merchant | None:
        """The shop's merchant now (None: none), bypassing the cache and the pacing of
        new shops (it has open streams: it was verified); `UnavailableError` when
        PostgreSQL cannot tell."""
        return await self._rechecks.join(shop)

    @property
    def ever_answered(self) -> bool:
        """Whether PostgreSQL has answered this process at least once."""
        return self._answers > 0

    async def ping(self) -> float:
        """Round trip of `SELECT 1` in milliseconds; raises UnavailableError."""
        started = time.perf_counter()
        await self._query("SELECT 1", {})
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        for task in [*self._lookups.tasks(), *self._rechecks.tasks(), *self._running]:
            task.cancel()
        if self._pool is not None:
            self._pool.terminate()
            await self._pool.wait_closed()
            self._pool = None

    def _answer(self, merchant: Merchant | None, shop: str) -> Merchant:
        if merchant is None:
            raise UnknownMerchantError(f"no active merchant for {shop}")
        return merchant

    async def _shared_lookup(self, shop: str) -> Merchant | None:
        # shared and shielded: a client leaving must not cancel a query (aiopg would
        # drop the connection)
        return await self._lookups.join(shop)

    async def _lookup(self, shop: str) -> Merchant | None:
        known = self._cache.get(shop)
        if known is None or known.merchant is None:  # an unknown shop asked again too
            await self._new_lookup_token()
        return await self._fetch(shop)

    async def _fetch(self, shop: str) -> Merchant | None:
        """One query for the shop's merchant, cached (negatively too)."""
        rows = await self._query(self._cfg.merchant_query, {"shop": shop})
        found = rows[0][0] if rows else None
        # a NULL or empty id (a custom merchant_query) is no merchant, never "None"
        merchant = Merchant(id=str(found), shop=shop) if found not in (None, "") else None
        ttl = self._cfg.cache_ttl if merchant else self._cfg.negative_cache_ttl
        if len(self._cache) >= _MAX_CACHE:
            self._evict()
        self._cache[shop] = _Cached(merchant, time.monotonic() + ttl)
        return merchant

    async def _new_lookup_token(self) -> None:
        """Wait for the token a shop not in the cache spends (`new_lookups_per_s`; the
        streams of one shop share its lookup, so its token); `UnavailableError` when
        the bucket is booked more than `_NEW_LOOKUP_WAIT_S` ahead (a storm: 503)."""
        wait = self._new_lookups.reserve()
        if wait is None:
            raise UnavailableError("too many new streams; retry shortly")
        if wait:
            await asyncio.sleep(wait)

    def _evict(self) -> None:
        """Unknown shops go first: an expired verified entry still admits its shop
        while PostgreSQL is down."""
        now = time.monotonic()
        steps = (lambda v: v.merchant is not None or v.expires_at > now,
                 lambda v: v.merchant is not None,
                 lambda v: v.expires_at > now)
        for keep in steps:
            self._cache = {k: v for k, v in self._cache.items() if keep(v)}
            if len(self._cache) < _MAX_CACHE:
                return

    async def _query(self, sql: str, params: dict[str, str]) -> list[tuple[object, ...]]:
        """Run one query within `query_timeout`, whatever aiopg does with the cancellation.

        The query runs in its own task: on timeout it is cancelled and left to finish
        on its own (aiopg can absorb a cancellation while it closes a connection to a
        frozen server), so no caller ever waits past the timeout. The timeout counts
        from when the query has a connection (`_connection`).
        """
        connected = asyncio.Event()
        task = asyncio.ensure_future(self._execute(sql, params, connected))
        self._running.add(task)
        task.add_done_callback(self._forget)
        timeout = self._cfg.query_timeout
        try:  # the time a congested loop loses is not blamed on PostgreSQL either
            await self._connection(task, connected)
            rows = await deadlines.wait(task, timeout)
        except deadlines.Late:
            task.cancel()
            # slow or saturated, not necessarily down: keep the pool and its connections
            self._mark_unavailable("TimeoutError")
            raise UnavailableError("PostgreSQL did not answer in time") from None
        except _FAULTS as exc:
            self._mark_unavailable(type(exc).__name__)
            self._drop_pool()  # rebuilt on the next query: no stale connection survives
            raise UnavailableError("PostgreSQL is unavailable") from None
        except psycopg2.Error as exc:  # e.g. merchant_query broken by a migration: loud, 503
            # the server's own message only: a client-side one may quote the DSN (a password)
            log.error("postgres query failed: %s%s", type(exc).__name__,
                      f": {exc.pgerror.strip()}" if exc.pgerror else "")
            self._mark_unavailable(type(exc).__name__)
            raise UnavailableError("PostgreSQL query failed") from None
        if not self.healthy:
            log.info("postgres available")
        self.healthy = True
        self._failing = False
        return rows

    async def _connection(self, task: asyncio.Task[Any], connected: asyncio.Event) -> None:
        """Wait until the query `task` holds a pool connection (or has ended).

        Queueing behind queries PostgreSQL keeps answering (a reconnect storm's
        lookups) is this process's backlog, not PostgreSQL's fault: the deadline
        starts again after every answer, up to `_QUEUE_CAP_S`. No answer for a whole
        `query_timeout`, or a last query that failed, is `deadlines.Late`.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _QUEUE_CAP_S
        waiting = asyncio.ensure_future(connected.wait())
        try:
            while True:
                answers = self._answers
                either = asyncio.ensure_future(asyncio.wait({task, waiting}, return_when=_FIRST))
                try:
                    await deadlines.wait(either, self._cfg.query_timeout)
                    return
                except deadlines.Late:
                    if self._failing or self._answers == answers or loop.time() >= give_up:
                        raise
        finally:
            waiting.cancel()

    async def _execute(
        self, sql: str, params: dict[str, str], connected: asyncio.Event
    ) -> list[tuple[object, ...]]:
        async with self._slots:  # aiopg's pool would convoy a storm's waiters on one lock
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                connected.set()
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(sql, params)
                        rows = list(await cur.fetchall())
                    self._answers += 1
                    return rows
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    conn.close()  # never hand a broken connection back to the pool
                    raise

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the failure of a query nobody awaits is not news

    def _mark_unavailable(self, why: str) -> None:
        if self.healthy or not self._failing:  # a change, or the first answer ever a failure
            log.warning("postgres unavailable: %s", why)
        self.healthy = False
        self._failing = True

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            task = asyncio.ensure_future(pool.wait_closed())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _get_pool(self) -> aiopg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await aiopg.create_pool(
                    self._cfg.dsn,
                    minsize=self._cfg.pool_min,
                    maxsize=self._cfg.pool_max,
                    # aiopg's own deadline (wall clock) must not preempt deadlines.wait's
                    timeout=self._cfg.query_timeout * _ACQUIRE_TIMEOUTS,
                    pool_recycle=300,
                )
            return self._pool
