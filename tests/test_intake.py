"""Validation: sane candles reach the writer; the rest are quarantined with
their reason (never stored, never dropped silently)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from candled import clock as wallclock
from candled.domain import Candle, SeriesKey
from candled.intake import Intake
from candled.store.migrations import migrate
from candled.validate import problem

KEY = SeriesKey("binance", "BTCUSDT", "1m")
NOW = datetime(2026, 1, 5, 12, 0, 30, tzinfo=UTC)
TS = datetime(2026, 1, 5, 11, 59, tzinfo=UTC)


def candle(ts: datetime = TS, o: float = 10, h: float = 12, low: float = 9, c: float = 11,
           v: float = 5, key: SeriesKey = KEY) -> Candle:  # fmt: skip
    return Candle(key, ts, o, h, low, c, v)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (candle(o=math.nan), "price not finite and positive"),
        (candle(c=math.inf, h=math.inf), "price not finite and positive"),
        (candle(low=0), "price not finite and positive"),
        (candle(o=-1, low=-2), "price not finite and positive"),
        (candle(v=-0.1), "volume not finite and non-negative"),
        (candle(v=math.nan), "volume not finite and non-negative"),
        (candle(h=10.5), "high below open or close"),
        (candle(low=10.5), "low above open or close"),
        (candle(ts=TS + timedelta(seconds=30)), "ts not aligned to 1m"),
        (candle(ts=TS + timedelta(minutes=1)), "bar closes in the future"),
    ],
)
def test_insane_candles_are_named(bad: Candle, reason: str) -> None:
    assert problem(bad, NOW) == reason


def test_sane_candle_and_clock_skew_pass() -> None:
    assert problem(candle(), NOW) is None
    assert problem(candle(v=0, o=10, h=10, low=10, c=10), NOW) is None
    # Closes 29.5 s ahead of our clock: more than the skew allows.
    assert problem(candle(ts=TS + timedelta(minutes=1)), NOW - timedelta(seconds=1)) is not None


async def test_intake_quarantines_bad_and_forwards_good(tsdb_dsn: str) -> None:
    pool = await asyncpg.create_pool(tsdb_dsn)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        forwarded: list[Candle] = []

        async def put(candles: Sequence[Candle]) -> None:
            forwarded.extend(candles)

        other = SeriesKey("binance", "DOGEUSDT", "1m")
        intake = Intake(put, pool, lambda: {KEY}, "ws")
        now = wallclock.now()
        ts = KEY.tf.floor(now) - timedelta(minutes=1)
        good = candle(ts=ts)
        await intake([good, candle(ts=ts, h=1), candle(ts=ts, key=other)])
        assert forwarded == [good]
        rows = await pool.fetch("SELECT symbol, reason, payload FROM quarantine ORDER BY id")
        assert [(r["symbol"], r["reason"]) for r in rows] == [
            ("BTCUSDT", "high below open or close"),
            ("DOGEUSDT", "not a configured series"),
        ]
        assert '"high": "1"' in rows[0]["payload"] or '"high": "1.0"' in rows[0]["payload"]
        assert await pool.fetchval("SELECT count(*) FROM candles") == 0
    finally:
        await pool.close()


async def test_late_answers_about_released_series_are_dropped_not_quarantined(
    migrated: str,
) -> None:
    """A series handed to another instance (or removed by a reload): answers
    still on their way are counted and dropped; its new owner fetches them."""
    pool = await asyncpg.create_pool(migrated)
    try:
        forwarded: list[Candle] = []

        async def put(candles: Sequence[Candle]) -> None:
            forwarded.extend(candles)

        released = SeriesKey("binance", "ETHUSDT", "1m")
        stranger = SeriesKey("binance", "DOGEUSDT", "1m")
        intake = Intake(put, pool, lambda: {KEY}, "rest", released=lambda: {released})
        ts = KEY.tf.floor(wallclock.now()) - timedelta(minutes=1)
        await intake([candle(ts=ts), candle(ts=ts, key=released), candle(ts=ts, key=stranger)])
        assert forwarded == [candle(ts=ts)]
        assert intake.dropped == 1
        rows = await pool.fetch("SELECT symbol, reason FROM quarantine")
        assert [(r["symbol"], r["reason"]) for r in rows] == [
            ("DOGEUSDT", "not a configured series")
        ]
    finally:
        await pool.close()
