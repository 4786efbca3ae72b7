"""Schema, migrations and the idempotent writer on a real TimescaleDB, and the
same schema on plain PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.domain import Candle, DataProfile, SeriesKey
from candled.store.database import Database
from candled.store.migrations import MigrationError, migrate
from candled.store.series import sync_configured
from candled.store.writer import CandleStore, CandleWriter, WriteResult

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_candles(n_series: int, n_bars: int, *, seed: int = 1, venue: str = "sim") -> list[Candle]:
    rnd = random.Random(seed)
    out = []
    for s in range(n_series):
        key = SeriesKey(venue, f"SYM{s}", "1m")
        for i in range(n_bars):
            o = 100 + rnd.random()
            c = 100 + rnd.random()
            out.append(
                Candle(
                    key, T0 + timedelta(minutes=i), o, max(o, c) + 1, min(o, c) - 1, c, rnd.random()
                )
            )
    return out


async def migrated(dsn: str) -> Database:
    db = await Database.connect(dsn)
    async with db.pool.acquire() as conn:
        await migrate(conn)
    await db.refresh_info()
    return db


async def test_timescaledb_is_loaded_and_candles_is_a_hypertable(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        assert db.info.timescaledb is not None
        assert db.info.license in ("apache", "timescale")
        n = await db.pool.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'candle_data'"
        )
        assert n == 1
    finally:
        await db.close()


async def test_plain_postgresql_runs_the_same_schema(plain_dsn: str) -> None:
    db = await migrated(plain_dsn)
    try:
        assert db.info.timescaledb is None and db.info.license is None
        store = CandleStore(db.pool)
        candles = make_candles(3, 50)
        assert await store.write(candles) == WriteResult(inserted=150)
        assert await store.write(candles) == WriteResult(unchanged=150)
        assert await db.pool.fetchval("SELECT count(*) FROM candles") == 150
    finally:
        await db.close()


async def test_migrations_twice_is_a_noop(tsdb_dsn: str) -> None:
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        first = await migrate(conn)
        assert first and first[0].startswith("001_")
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_once(tsdb_dsn: str, tmp_path: Path) -> None:
    # A slow migration widens the race window: without the advisory lock both
    # runners would try it and one would fail on the duplicate table.
    (tmp_path / "001_slow.sql").write_text(
        "SELECT pg_sleep(0.5); CREATE TABLE raced (x int); INSERT INTO raced VALUES (1);"
    )
    (tmp_path / "002_more.sql").write_text("INSERT INTO raced VALUES (2);")
    conns = [await asyncpg.connect(tsdb_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, tmp_path) for c in conns))
        applied = sorted(name for r in results for name in r)
        assert applied == ["001_slow.sql", "002_more.sql"]
        assert await conns[0].fetchval("SELECT count(*) FROM raced") == 2
    finally:
        for c in conns:
            await c.close()


async def test_edited_migration_is_refused(tsdb_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);")
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        await migrate(conn, tmp_path)
        (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, tmp_path)
    finally:
        await conn.close()


async def test_same_candles_twice_then_revised_hundred(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        store = CandleStore(db.pool)
        candles = make_candles(10, 1000)
        assert await store.write(candles) == WriteResult(inserted=10_000)
        assert await store.write(candles) == WriteResult(unchanged=10_000)
        revised = [
            Candle(c.series, c.ts, c.open, c.high + 1, c.low, c.close, c.volume + 5)
            for c in random.Random(7).sample(candles, 100)
        ]
        assert await store.write(revised) == WriteResult(updated=100)
        assert await db.pool.fetchval("SELECT count(*) FROM candles") == 10_000
        r = revised[0]
        row = await db.pool.fetchrow(
            "SELECT high, volume FROM candles WHERE venue=$1 AND symbol=$2 AND timeframe=$3 AND ts=$4",
            r.series.venue,
            r.series.symbol,
            r.series.timeframe,
            r.ts,
        )
        assert (row["high"], row["volume"]) == (r.high, r.volume)
    finally:
        await db.close()


async def test_mixed_batch_counts_new_changed_and_unchanged(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        store = CandleStore(db.pool)
        old, new = make_candles(1, 100)[:50], make_candles(1, 100)[50:]
        await store.write(old)
        changed = [
            Candle(c.series, c.ts, c.open, c.high, c.low, c.close, c.volume + 1) for c in old[:10]
        ]
        # The new rows make the fast path fail part-way; the upsert must still
        # count each row once.
        assert await store.write(changed + old[10:] + new) == WriteResult(
            inserted=50, updated=10, unchanged=40
        )
        assert await db.pool.fetchval("SELECT count(*) FROM candle_data") == 100
    finally:
        await db.close()


async def test_duplicates_inside_one_batch_keep_the_last_revision(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        c = make_candles(1, 1)[0]
        later = Candle(c.series, c.ts, c.open, c.high + 2, c.low, c.close, c.volume)
        assert await CandleStore(db.pool).write([c, later]) == WriteResult(inserted=1)
        assert await db.pool.fetchval("SELECT high FROM candles") == later.high
    finally:
        await db.close()


async def test_writer_flushes_by_size_and_age_with_bounded_buffer(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        writer = CandleWriter(CandleStore(db.pool), batch_size=100, max_age=0.05, capacity=300)
        candles = make_candles(2, 1000)
        peak = 0

        async def produce() -> None:
            nonlocal peak
            for i in range(0, len(candles), 37):
                await writer.put(candles[i : i + 37])
                peak = max(peak, writer.pending)

        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await produce()
            # The tail is smaller than a batch: the age limit must flush it.
            while writer.totals.inserted < 2000:
                await asyncio.sleep(0.01)
            runner.cancel()
        assert await writer.flush() == WriteResult()  # nothing was left behind
        assert peak <= 300
        assert writer.totals.inserted == 2000
        assert writer.batches >= 20
        assert await db.pool.fetchval("SELECT count(*) FROM candle_data") == 2000
    finally:
        await db.close()


async def test_writer_retries_a_failed_batch_until_the_table_is_back(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        writer = CandleWriter(CandleStore(db.pool), batch_size=10, max_age=0.01, capacity=100)
        await db.pool.execute("ALTER TABLE candle_data RENAME TO candle_data_away")
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await writer.put(make_candles(1, 25))
            while writer.failures < 2:
                await asyncio.sleep(0.01)
            assert writer.totals.inserted == 0
            await db.pool.execute("ALTER TABLE candle_data_away RENAME TO candle_data")
            while writer.totals.inserted < 25:
                await asyncio.sleep(0.01)
            runner.cancel()
        assert await writer.flush() == WriteResult()
        assert await db.pool.fetchval("SELECT count(*) FROM candle_data") == 25
    finally:
        await db.close()


async def test_series_status_lists_configured_series(tsdb_dsn: str) -> None:
    db = await migrated(tsdb_dsn)
    try:
        a, b = SeriesKey("sim", "A", "1m"), SeriesKey("sim", "B", "1h")
        async with db.pool.acquire() as conn:
            await sync_configured(
                conn, {a: (DataProfile.CRYPTO, ""), b: (DataProfile.EQUITY, "XNYS")}
            )
            rows = await conn.fetch(
                "SELECT symbol, profile, status FROM series_status ORDER BY symbol"
            )
            assert [tuple(r) for r in rows] == [
                ("A", "CRYPTO", "MISSING"),
                ("B", "EQUITY", "MISSING"),
            ]
            await sync_configured(conn, {a: (DataProfile.CRYPTO, "")})
            rows = await conn.fetch("SELECT symbol FROM series_status")
            assert [r["symbol"] for r in rows] == ["A"]
    finally:
        await db.close()
