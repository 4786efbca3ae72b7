"""Audit 100 series x 30 days of `1m` (4.32M rows): a full audit, then an
incremental one after one more hour of bars.

The rows are COPYed straight into `candle_data` (no writer), then a few random
bars per series are deleted so that the audit has gaps to find. The healer's
clock is pinned, so the expected grid does not move while the benchmark runs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from candled.config import SeriesSpec
from candled.domain import DataProfile, SeriesKey, Timeframe
from candled.healer import AuditResult, Healer
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import ensure_series

N_SERIES, DAYS, TIMEFRAME = 100, 30, "1m"
DELETED_PER_SERIES = 5
LOOKBACK = timedelta(days=DAYS)
COPY_CONNECTIONS = 2  # one builds records while the other's COPY runs in the server
GOAL_FULL_S, GOAL_INCREMENTAL_S = 10.0, 0.5
_COLUMNS = ("series_id", "ts", "open", "high", "low", "close", "volume")


def _records(series_id: int, opens: list[datetime], seed: int) -> list[tuple[object, ...]]:
    """Plausible bars: a cheap deterministic wave per series (values do not matter here)."""
    base = 10.0 + seed
    out: list[tuple[object, ...]] = []
    for i, ts in enumerate(opens):
        o = base + math.sin((i + seed) / 97.0)
        c = base + math.sin((i + seed + 1) / 97.0)
        out.append((series_id, ts, o, max(o, c) + 0.01, min(o, c) - 0.01, c, 1.0 + (i % 7)))
    return out


async def _copy_bars(
    pool: asyncpg.Pool, ids: list[int], opens: list[datetime], series_per_copy: int = 5
) -> int:
    """COPY one row per (series, open time) over COPY_CONNECTIONS connections."""
    queue = [ids[i : i + series_per_copy] for i in range(0, len(ids), series_per_copy)]

    async def copier() -> int:
        rows = 0
        async with pool.acquire() as conn:
            while queue:
                records = [r for sid in queue.pop() for r in _records(sid, opens, sid)]
                await conn.copy_records_to_table("candle_data", records=records, columns=_COLUMNS)
                rows += len(records)
        return rows

    return sum(await asyncio.gather(*(copier() for _ in range(COPY_CONNECTIONS))))


async def _timed_audit(healer: Healer, full: bool) -> tuple[float, list[AuditResult]]:
    start = time.perf_counter()
    results = await healer.audit(full=full)
    return time.perf_counter() - start, results


def _row(label: str, secs: float, results: list[AuditResult], goal_s: float) -> None:
    scanned = sum(r.rows_scanned for r in results)
    missing = sum(r.missing_bars for r in results)
    met = "yes" if secs < goal_s else "no"
    print(
        f"  {label:<34} {secs:8.3f} s {scanned:>12,} rows scanned {missing:>6,} missing bars"
        f"   goal < {goal_s:g} s met: {met}",
        flush=True,
    )


async def run(dsn: str) -> None:
    """Needs an empty database (migrations are applied here)."""
    db = await Database.connect(dsn, max_size=4)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        await db.refresh_info()
        tf = Timeframe.parse(TIMEFRAME)
        # Pinned clock: 45 s into the minute after the newest stored bar, so
        # that bar has closed and settled (the healer waits SETTLE = 30 s).
        end = tf.floor(datetime.now(UTC))
        clock = [end + timedelta(seconds=45)]
        keys = [SeriesKey("bench", f"A{i:03d}", TIMEFRAME) for i in range(N_SERIES)]
        async with db.pool.acquire() as conn:
            ids = await ensure_series(conn, keys)
        n_bars = DAYS * 86_400 // tf.seconds
        opens = [tf.add(end, i - n_bars) for i in range(n_bars)]
        print(
            f"audit benchmark: {N_SERIES} series x {DAYS} days of {TIMEFRAME} "
            f"({N_SERIES * n_bars:,} rows), CRYPTO profile, lookback {DAYS}d, {db.info.describe}",
            flush=True,
        )
        start = time.perf_counter()
        rows = await _copy_bars(db.pool, [ids[k] for k in keys], opens)
        # Gaps: a few random bars per series, inside the audited range.
        rnd = random.Random(7)
        doomed = [
            (ids[k], opens[i])
            for k in keys
            for i in rnd.sample(range(10, n_bars - 10), DELETED_PER_SERIES)
        ]
        deleted = await db.pool.execute(
            """DELETE FROM candle_data c USING unnest($1::int[], $2::timestamptz[]) AS d(id, ts)
               WHERE c.series_id = d.id AND c.ts = d.ts""",
            [d[0] for d in doomed],
            [d[1] for d in doomed],
        )
        # A long-running store is vacuumed and analyzed; without this, autovacuum
        # would start on the fresh chunks in the middle of the audits.
        await db.pool.execute("VACUUM (ANALYZE) candle_data")
        print(
            f"  loaded {rows:,} rows by COPY, {deleted.split()[-1]} random bars deleted, "
            f"VACUUM ANALYZE: {time.perf_counter() - start:.1f} s",
            flush=True,
        )

        specs = {
            k: SeriesSpec(k, DataProfile.CRYPTO, "", live=False, lookback=LOOKBACK) for k in keys
        }
        healer = Healer(db.pool, specs, interval=timedelta(minutes=15), clock=lambda: clock[0])
        secs, results = await _timed_audit(healer, full=True)
        _row("full audit (full=True)", secs, results, GOAL_FULL_S)

        # One new hour per series, then the clock moves on by that hour.
        hour = [tf.add(end, i) for i in range(3_600 // tf.seconds)]
        await _copy_bars(db.pool, [ids[k] for k in keys], hour)
        clock[0] += timedelta(hours=1)
        secs, results = await _timed_audit(healer, full=False)
        _row("incremental audit (+1 hour of bars)", secs, results, GOAL_INCREMENTAL_S)
        # The lookback window moved on by the hour too: deleted bars that fell
        # out of it no longer count.
        lo = tf.ceil(clock[0] - LOOKBACK)
        inside = sum(1 for _, ts in doomed if ts >= lo)
        found = sum(r.missing_bars for r in results)
        print(
            f"  missing bars found by the incremental audit: {found:,} "
            f"(deleted and still inside the lookback: {inside:,})",
            flush=True,
        )
    finally:
        await db.close()
