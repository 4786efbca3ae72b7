"""Write 1,000,000 candles (1,000 series x 1,000 bars) three ways.

1. the writer (COPY to staging + de-duplicated upsert),
2. asyncpg `executemany` of INSERT ... ON CONFLICT DO UPDATE,
3. raw COPY into the hypertable with no conflict handling (the ceiling),
each into an empty table; then the writer and executemany again on the same
batch (every row a conflict, nothing changed).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from candled.domain import Candle, SeriesKey
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import ensure_series
from candled.store.writer import CandleStore, CandleWriter

N_SERIES, N_BARS, BATCH = 1_000, 1_000, 10_000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
_EXECUTEMANY = """INSERT INTO candle_data (series_id, ts, open, high, low, close, volume)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (series_id, ts) DO UPDATE
SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
    close = EXCLUDED.close, volume = EXCLUDED.volume"""
_COLUMNS = ("series_id", "ts", "open", "high", "low", "close", "volume")


def candles() -> list[Candle]:
    rnd = random.Random(42)
    out = []
    for s in range(N_SERIES):
        key = SeriesKey("bench", f"S{s:04d}", "1m")
        price = 100.0
        for i in range(N_BARS):
            o, price = price, max(1.0, price + rnd.gauss(0, 0.5))
            out.append(
                Candle(
                    key,
                    T0 + timedelta(minutes=i),
                    o,
                    max(o, price) + 0.1,
                    min(o, price) - 0.1,
                    price,
                    rnd.random() * 10,
                )
            )
    return out


async def timed(label: str, n: int, fn: Callable[[], Awaitable[object]]) -> tuple[str, float]:
    start = time.perf_counter()
    await fn()
    secs = time.perf_counter() - start
    print(f"  {label:<44} {secs:8.2f} s {n / secs:>12,.0f} candles/s", flush=True)
    return label, n / secs


async def run(dsn: str) -> None:
    db = await Database.connect(dsn, max_size=2)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        await db.refresh_info()
        data = candles()
        n = len(data)
        # The million input candles live for the whole run; keep the cyclic GC
        # from re-scanning them on every batch (a daemon holds no such heap).
        gc.freeze()
        async with db.pool.acquire() as conn:
            ids = await ensure_series(conn, {c.series for c in data})
        records = [(ids[c.series], c.ts, c.open, c.high, c.low, c.close, c.volume) for c in data]
        store = CandleStore(db.pool)

        async def truncate() -> None:
            await db.pool.execute("TRUNCATE candle_data")

        async def via_writer() -> None:
            writer = CandleWriter(store, batch_size=BATCH, capacity=4 * BATCH)
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(writer.run())
                for i in range(0, n, BATCH):
                    await writer.put(data[i : i + BATCH])
                while writer.totals.total < n:
                    await asyncio.sleep(0.005)
                runner.cancel()

        async def via_executemany() -> None:
            async with db.pool.acquire() as conn:
                for i in range(0, n, BATCH):
                    async with conn.transaction():
                        await conn.executemany(_EXECUTEMANY, records[i : i + BATCH])

        async def via_copy() -> None:
            async with db.pool.acquire() as conn:
                for i in range(0, n, BATCH):
                    await conn.copy_records_to_table(
                        "candle_data", records=records[i : i + BATCH], columns=_COLUMNS
                    )

        print(
            f"writer benchmark: {n:,} candles ({N_SERIES} series x {N_BARS} bars), "
            f"batches of {BATCH:,}, {db.info.describe}"
        )
        print("  into an empty table:")
        results: dict[str, float] = {}
        for label, fn in (
            ("writer (staging COPY + upsert, pipelined)", via_writer),
            ("executemany INSERT ON CONFLICT", via_executemany),
            ("raw COPY, no conflict handling", via_copy),
        ):
            await truncate()
            _, rate = await timed(label, n, fn)
            results[label] = rate
        await truncate()
        await via_writer()
        print("  the same batch again (all conflicts, nothing changed):")
        _, again_w = await timed("writer", n, via_writer)
        _, again_e = await timed("executemany", n, via_executemany)
        w, e, c = (results[k] for k in results)
        print(
            f"  writer / executemany: {w / e:.1f}x (goal >= 5x); "
            f"writer / raw COPY: {w / c:.2f}x (goal >= 0.5x); "
            f"writer >= 100,000/s: {'yes' if w >= 100_000 else 'NO'}"
        )
        print(f"  conflicts: writer / executemany: {again_w / again_e:.1f}x")
    finally:
        await db.close()
