"""`ensure_series` when several instances create the same series at once
(a cluster's instances starting together on a new database): each gets
every id, none a KeyError."""

from __future__ import annotations

import asyncio

import asyncpg

from candled.domain import SeriesKey
from candled.store.series import ensure_series

KEYS = [SeriesKey("binance", f"S{i}USDT", "1m") for i in range(5)]


async def test_ids_of_rows_another_transaction_inserted_meanwhile(migrated: str) -> None:
    first, second = await asyncpg.connect(migrated), await asyncpg.connect(migrated)
    try:
        tx = first.transaction()
        await tx.start()
        mine = await ensure_series(first, KEYS)  # inserted, not committed yet
        # The second insert waits on the first's rows; its snapshot predates them.
        theirs = asyncio.create_task(ensure_series(second, KEYS))
        await asyncio.sleep(0.3)
        assert not theirs.done()
        await tx.commit()
        async with asyncio.timeout(10):
            ids = await theirs
        assert ids == mine
        assert set(ids) == set(KEYS)
    finally:
        await first.close()
        await second.close()
