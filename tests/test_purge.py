"""Holes behind the audit frontier (issue: a series reported OK with bars
missing): deleted bars are found by the next audit, however they were deleted.

Against a real TimescaleDB; the healer runs at pinned instants (its clock)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.config import SeriesSpec
from candled.domain import Candle, DataProfile, SeriesKey
from candled.healer import Healer, SeriesStatus
from candled.store import healing
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import sync_configured
from candled.store.writer import CandleStore
from tests.daemon_proc import REPO, series_toml, venue_toml, write_config

BTC = SeriesKey("binance", "BTCUSDT", "1m")
NOW = datetime(2026, 11, 30, 12, 0, 40, tzinfo=UTC)
LOOKBACK = timedelta(days=2)
# Bars deleted from the middle: far behind any incremental audit's margin.
PURGED = [NOW - timedelta(hours=h) for h in (30, 20, 10)]
PURGED = [BTC.tf.floor(t) for t in PURGED]


def specs() -> dict[SeriesKey, SeriesSpec]:
    return {BTC: SeriesSpec(BTC, DataProfile.CRYPTO, "", True, LOOKBACK)}


@pytest.fixture
async def db(tsdb_dsn: str) -> AsyncIterator[Database]:
    db = await Database.connect(tsdb_dsn)
    async with db.pool.acquire() as conn:
        await migrate(conn)
        await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs().items()})
    start, end = BTC.tf.ceil(NOW - LOOKBACK), BTC.tf.floor(NOW)
    candles = [Candle(BTC, ts, 1.0, 2.0, 0.5, 1.5, 3.0) for ts in BTC.tf.bars(start, end)]
    await CandleStore(db.pool).write(candles)
    yield db
    await db.close()


def healer(db: Database, now: datetime) -> Healer:
    return Healer(db.pool, specs(), interval=timedelta(minutes=15), clock=lambda: now)


async def stored(conn: asyncpg.Connection) -> set[datetime]:
    return {r["ts"] for r in await conn.fetch("SELECT ts FROM candles WHERE symbol = 'BTCUSDT'")}


async def audited_until(conn: asyncpg.Connection) -> datetime | None:
    row = await healing.series_row(conn, BTC.venue, BTC.symbol, BTC.timeframe)
    assert row is not None
    return row.audited_until


async def test_delete_from_candles_removes_the_bars(db: Database) -> None:
    async with db.pool.acquire() as conn:
        before = await stored(conn)
        status = await conn.execute(
            "DELETE FROM candles WHERE venue = 'binance' AND symbol = 'BTCUSDT' "
            "AND timeframe = '1m' AND ts = ANY($1::timestamptz[])",
            PURGED,
        )
        assert status == f"DELETE {len(PURGED)}"
        assert await stored(conn) == before - set(PURGED)


async def test_an_incremental_audit_finds_bars_deleted_behind_its_frontier(db: Database) -> None:
    (first,) = await healer(db, NOW).audit()
    assert first.status is SeriesStatus.OK
    later = NOW + timedelta(minutes=5)
    async with db.pool.acquire() as conn:
        assert await audited_until(conn) is not None
        await conn.execute(
            "DELETE FROM candles WHERE symbol = 'BTCUSDT' AND ts = ANY($1::timestamptz[])", PURGED
        )
        assert await audited_until(conn) is None, "the delete must reset the audit frontier"
    (again,) = await healer(db, later).audit()  # incremental: not asked to be full
    assert again.status is SeriesStatus.DEGRADED
    holes = [t for s, e in again.gaps for t in BTC.tf.bars(s, e)]
    # The five newest bars closed after the first audit and are not stored either.
    assert set(PURGED) <= set(holes)
    assert [t for t in holes if t < NOW - timedelta(minutes=1)] == PURGED


async def test_a_delete_while_an_audit_runs_leaves_the_frontier_reset(db: Database) -> None:
    async with db.pool.acquire() as conn:
        row = await healing.series_row(conn, BTC.venue, BTC.symbol, BTC.timeframe)
        assert row is not None
        # The audit read the series (row) before this delete, and saves after it.
        await conn.execute("DELETE FROM candle_data WHERE ts = $1", PURGED[0])
        await healing.save_audit(
            conn, row.id, status="OK", first_ts=None, last_ts=None, gaps=[], missing_bars=0,
            confirmed_empty_bars=0, expected_bars=0, audited_at=NOW, audited_until=NOW,
            full=True, purged_at=row.purged_at,
        )  # fmt: skip
        assert await audited_until(conn) is None
        after = await healing.series_row(conn, BTC.venue, BTC.symbol, BTC.timeframe)
        assert after is not None and after.last_full_audit is None


async def delete_without_triggers(conn: asyncpg.Connection) -> None:
    """As a restored backup or a dropped chunk would: no trigger sees it."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("DELETE FROM candle_data WHERE ts = ANY($1::timestamptz[])", PURGED)


async def test_the_scheduled_full_audit_finds_holes_no_trigger_saw(db: Database) -> None:
    h = healer(db, NOW)
    h.full_audit_interval = timedelta(hours=1)
    (first,) = await h.audit()
    assert first.status is SeriesStatus.OK
    async with db.pool.acquire() as conn:
        await delete_without_triggers(conn)
        assert await audited_until(conn) is not None
    (incremental,) = await h.audit(at=NOW + timedelta(minutes=30))
    assert not set(PURGED) & bars(incremental.gaps), "before the interval it cannot see them"
    (full,) = await h.audit(at=NOW + timedelta(hours=1))
    assert set(PURGED) <= bars(full.gaps)


def bars(gaps: list[tuple[datetime, datetime]]) -> set[datetime]:
    return {t for s, e in gaps for t in BTC.tf.bars(s, e)}


async def run_cli(config: Path, dsn: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "CANDLED_DATABASE_URL": dsn,
           "CANDLED_CLOCK_OFFSET": str((NOW - datetime.now(UTC)).total_seconds())}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "candled", *args, "--config", str(config),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_candled_audit_is_full_by_default(
    db: Database, tsdb_dsn: str, tmp_path: Path
) -> None:
    body = venue_toml("binance", 9) + series_toml(
        "binance", [BTC.symbol], [BTC.timeframe], lookback=f'"{LOOKBACK.days}d"'
    )
    config = write_config(tmp_path, body)
    await healer(db, NOW).audit()
    async with db.pool.acquire() as conn:
        await delete_without_triggers(conn)
    code, out = await run_cli(config, tsdb_dsn, "audit", "--incremental")
    assert code == 0, out  # the incremental audit cannot know
    code, out = await run_cli(config, tsdb_dsn, "audit")
    assert code == 1, out
    assert "DEGRADED" in out, out
