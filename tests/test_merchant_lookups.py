"""Merchant lookups against a real PostgreSQL: a storm of first lookups on a busy loop.

After a restart every merchant's first stream needs a lookup at once, while the
loop is busy accepting thousands of connections. aiopg's pool hands its lock
over once per loop turn, and every waiter queued inside it takes a turn: a
thousand lookups made each release wait seconds, and lookups timed out as if
PostgreSQL had stopped answering (503 for streams PostgreSQL could serve).
"""

from __future__ import annotations

import asyncio
import time

from support import unique_merchant

from gateway.access.merchants import MerchantDirectory
from gateway.config import PostgresConfig
from tools.services import PostgresServer

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
