"""Merchant lookups against a real PostgreSQL: a storm of first lookups on a busy loop.

After a restart every merchant's first stream needs a lookup at once, while the
loop is busy accepting thousands of connections. aiopg's pool hands its lock
over once per loop turn, and every waiter queued inside it takes a turn: a
thousand lookups made each release wait seconds, and lookups timed out as if
PostgreSQL had stopped answering (503 for streams PostgreSQL could serve).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from support import unique_merchant

from gateway.access import merchants
from gateway.access.merchants import MerchantDirectory
from gateway.config import PostgresConfig
from tools.services import PostgresServer, free_port

LOOKUPS = 300
TURN_S = 0.005  # what each loop turn costs besides the lookups (a storm's other work)


def test_a_storm_of_first_lookups_on_a_busy_loop_is_answered(
    postgres_server: PostgresServer,
) -> None:
    tag = unique_merchant("lk")[0].removesuffix("-id")
    shops = [(f"{tag}-{i}-id", f"{tag}-{i}.myshopify.com") for i in range(LOOKUPS)]
    postgres_server.execute(
        "INSERT INTO merchants (id, shop_domain) SELECT unnest(%s::text[]), unnest(%s::text[])",
        ([mid for mid, _ in shops], [shop for _, shop in shops]))
    cfg = PostgresConfig(dsn=postgres_server.dsn, pool_max=10, query_timeout=0.5)

    async def storm() -> list[object]:
        loop = asyncio.get_running_loop()
        busy = True

        def other_work() -> None:  # blocks each turn of the loop a little, like a storm
            time.sleep(TURN_S)
            if busy:
                loop.call_soon(other_work)

        directory = MerchantDirectory(cfg)
        loop.call_soon(other_work)
        try:
            return await asyncio.gather(*(directory.verify(shop) for _, shop in shops),
                                        return_exceptions=True)
        finally:
            busy = False
            await directory.close()

    answers = asyncio.run(storm())
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert not failed, f"{len(failed)} of {LOOKUPS} lookups failed: {failed[0]!r}"
    assert [a.id for a in answers] == [mid for mid, _ in shops]  # type: ignore[union-attr]


def test_an_unknown_shop_asked_again_spends_a_new_lookup_token(
    postgres_server: PostgresServer,
) -> None:
    """`max_new_streams_per_s` paces lookups of shops PostgreSQL may not know. An
    unknown shop's expired negative entry used to count as "known": asked again,
    made-up shops reached PostgreSQL unpaced (every 5 s, as many as the cache holds)."""
    tag = unique_merchant("nl")[0].removesuffix("-id")
    shops = [f"{tag}-{i}.myshopify.com" for i in range(6)]  # none of them exists
    cfg = PostgresConfig(dsn=postgres_server.dsn, negative_cache_ttl=0.05)

    async def twice() -> tuple[list[str], list[str], float]:
        directory = MerchantDirectory(cfg, new_lookups_per_s=2)  # 3 x 2 admitted at once
        try:
            async def ask() -> list[str]:
                answers = await asyncio.gather(*(directory.verify(s) for s in shops),
                                               return_exceptions=True)
                return [type(a).__name__ for a in answers]

            first = await ask()
            await asyncio.sleep(0.1)  # the negative entries expire (a TTL: nothing to await)
            started = time.monotonic()
            again = await ask()
            return first, again, time.monotonic() - started
        finally:
            await directory.close()

    first, again, took = asyncio.run(twice())
    assert first == ["UnknownMerchantError"] * 6
    # at most 2 tokens are left: the 6 lookups wait for theirs, or some are refused
    # (it answered all 6 from PostgreSQL at once)
    assert "UnavailableError" in again or took >= 1.0, (again, took)


def test_a_null_merchant_id_is_no_merchant(postgres_server: PostgresServer) -> None:
    """A custom merchant_query that yields NULL (or '') for a shop: the shop has no
    merchant. It was admitted as merchant "None", shared by every such shop."""
    tag = unique_merchant("nu")[0].removesuffix("-id")
    cfg = PostgresConfig(dsn=postgres_server.dsn,
                         merchant_query="SELECT CASE WHEN %(shop)s LIKE '%%.null' THEN NULL "
                                        "ELSE '' END")

    async def ask() -> list[str]:
        directory = MerchantDirectory(cfg)
        try:
            answers = await asyncio.gather(directory.verify(f"{tag}.null"),
                                           directory.verify(f"{tag}.empty"),
                                           return_exceptions=True)
            return [type(a).__name__ for a in answers]
        finally:
            await directory.close()

    assert asyncio.run(ask()) == ["UnknownMerchantError", "UnknownMerchantError"]


def test_a_full_cache_evicts_unknown_shops_before_verified_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expired verified entry still admits its shop while PostgreSQL is down, so
    a cache filled by made-up shops evicts those first (unit)."""
    monkeypatch.setattr(merchants, "_MAX_CACHE", 4)
    directory = MerchantDirectory(PostgresConfig(dsn="postgresql://unused"))
    past, future = time.monotonic() - 1, time.monotonic() + 60
    directory._cache = {
        "verified-expired": merchants._Cached(merchants.Merchant("m1", "verified-expired"), past),
        "verified": merchants._Cached(merchants.Merchant("m2", "verified"), future),
        "unknown-expired": merchants._Cached(None, past),
        "unknown": merchants._Cached(None, future),
    }
    directory._evict()
    assert set(directory._cache) == {"verified-expired", "verified", "unknown"}
    directory._cache["unknown-2"] = merchants._Cached(None, future)
    directory._evict()
    assert set(directory._cache) == {"verified-expired", "verified"}


def test_a_recheck_is_never_paced(postgres_server: PostgresServer) -> None:
    """The recheck asks about shops with open streams: verified ones. A shop that a
    new stream just found inactive (negative entry) is rechecked at once, however
    busy the new-shop pacing is, so its open streams are revoked on time."""
    tag = unique_merchant("rc")[0].removesuffix("-id")
    cfg = PostgresConfig(dsn=postgres_server.dsn)
    unknown = [f"{tag}-{i}.myshopify.com" for i in range(8)]

    async def run() -> list[str]:
        directory = MerchantDirectory(cfg, new_lookups_per_s=1)  # 3 at once, then 1/s
        try:
            first = await asyncio.gather(*(directory.verify(s) for s in unknown[:3]),
                                         return_exceptions=True)
            assert all(type(a).__name__ == "UnknownMerchantError" for a in first), first
            # the bucket is booked out: a paced lookup now waits 2 s or is refused
            async with asyncio.timeout(1.0):
                again = await asyncio.gather(*(directory.recheck(s) for s in unknown[:3]),
                                             return_exceptions=True)
            return [type(a).__name__ for a in again]
        finally:
            await directory.close()

    assert asyncio.run(run()) == ["NoneType"] * 3


def test_a_postgresql_that_never_answered_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a change from available used to be logged: a gateway started against a
    PostgreSQL it could never reach (a wrong port, password or database) said nothing."""
    cfg = PostgresConfig(dsn=f"postgresql://gw:S3cretPg@127.0.0.1:{free_port()}/gw",
                         query_timeout=0.5)

    async def pings() -> None:
        directory = MerchantDirectory(cfg)
        try:
            for _ in range(3):
                with pytest.raises(merchants.UnavailableError):
                    await directory.ping()
        finally:
            await directory.close()

    with caplog.at_level(logging.WARNING, logger="gateway.access.merchants"):
        asyncio.run(pings())
    said = [r.getMessage() for r in caplog.records if "postgres unavailable" in r.getMessage()]
    assert len(said) == 1, said
    assert "S3cretPg" not in caplog.text
