"""Series status semantics at the edges: OK means complete (README, "Self-healing", Status).

`classify` is pure and tested on its own; the audit cases then run the real
healer against a real store at pinned instants (the healer's clock), so each
case is the same at any hour the suite runs: a confirmed-empty tail after the
close, a bar the venue has not yet published, a weekend, a holiday, an early
close, a series listed minutes ago.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from candled.config import SeriesSpec
from candled.domain import Candle, DataProfile, SeriesKey, Timeframe
from candled.domain.ranges import Range
from candled.gaps import RepairState
from candled.healer import Healer, SeriesStatus, classify, stale_allowance
from candled.store import healing
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import set_genesis, sync_configured
from candled.store.writer import CandleStore

M1, M15 = Timeframe.parse("1m"), Timeframe.parse("15m")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- classify ------------------------------------------------------------------


def test_no_stored_bar_is_missing() -> None:
    assert classify(has_data=False, gaps=[], settled_end=T0, tf=M1) is SeriesStatus.MISSING


def test_no_hole_is_ok() -> None:
    assert classify(has_data=True, gaps=[], settled_end=T0, tf=M1) is SeriesStatus.OK


def test_a_hole_in_the_middle_is_degraded() -> None:
    gaps = [(T0 - timedelta(hours=2), T0 - timedelta(hours=1))]
    assert classify(has_data=True, gaps=gaps, settled_end=T0, tf=M1) is SeriesStatus.DEGRADED


def test_a_tail_hole_within_the_allowance_is_degraded_and_past_it_stale() -> None:
    allowance = stale_allowance(M1)
    assert allowance == timedelta(minutes=5)
    short = [(T0 - allowance, T0)]
    assert classify(has_data=True, gaps=short, settled_end=T0, tf=M1) is SeriesStatus.DEGRADED
    long = [(T0 - allowance - timedelta(minutes=1), T0)]
    assert classify(has_data=True, gaps=long, settled_end=T0, tf=M1) is SeriesStatus.STALE


def test_the_allowance_is_two_bars_for_long_timeframes() -> None:
    assert stale_allowance(M15) == timedelta(minutes=30)
    assert stale_allowance(Timeframe.parse("1d")) == timedelta(days=2)


# --- audits at pinned instants ---------------------------------------------------

EQ15 = SeriesKey("alpaca", "EQTY", "15m")
EQ1 = SeriesKey("alpaca", "EQTY", "1m")
BTC = SeriesKey("binance", "BTCUSDT", "1m")


def specs(lookback: timedelta = timedelta(days=3)) -> dict[SeriesKey, SeriesSpec]:
    return {
        EQ15: SeriesSpec(EQ15, DataProfile.EQUITY, "XNYS", True, lookback),
        EQ1: SeriesSpec(EQ1, DataProfile.EQUITY, "XNYS", True, lookback),
        BTC: SeriesSpec(BTC, DataProfile.CRYPTO, "", True, lookback),
    }


@pytest.fixture
async def db(tsdb_dsn: str) -> AsyncIterator[Database]:
    db = await Database.connect(tsdb_dsn)
    async with db.pool.acquire() as conn:
        await migrate(conn)
        await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs().items()})
    yield db
    await db.close()


async def store_bars(db: Database, key: SeriesKey, start: datetime, end: datetime) -> None:
    """Every bar of `key` in [start, end), market hours or not: the audit only
    counts bars its calendar expects."""
    candles = [Candle(key, ts, 1.0, 1.0, 1.0, 1.0, 1.0) for ts in key.tf.bars(start, end)]
    await CandleStore(db.pool).write(candles)


async def confirm_empty(db: Database, key: SeriesKey, ranges: Sequence[Range]) -> None:
    async with db.pool.acquire() as conn:
        row = await healing.series_row(conn, key.venue, key.symbol, key.timeframe)
        assert row is not None
        for r in ranges:
            state = RepairState(1, None, confirmed_empty=True)
            await healing.save_empty_state(conn, row.id, r, state, r[1])


async def audit(
    db: Database, key: SeriesKey, now: datetime, settling: dict[str, timedelta] | None = None
) -> tuple[SeriesStatus, int]:
    healer = Healer(
        db.pool, specs(), interval=timedelta(minutes=15), settling=settling, clock=lambda: now
    )
    (result,) = await healer.audit([key], full=True)
    return result.status, result.missing_bars


async def test_a_session_ending_in_untraded_bars_confirmed_empty_is_ok(db: Database) -> None:
    # Monday 2026-11-30, NYSE 14:30-21:00 UTC; the last three 15m bars had no
    # trades (a sparse venue publishes none) and the venue said so.
    await store_bars(db, EQ15, at("2026-11-27 00:00"), at("2026-11-30 20:15"))
    now = at("2026-12-01 11:15")
    status, missing = await audit(db, EQ15, now)
    assert (status, missing) == (SeriesStatus.STALE, 3), "the tail is a hole until confirmed"
    await confirm_empty(db, EQ15, [(at("2026-11-30 20:15"), at("2026-11-30 21:00"))])
    assert await audit(db, EQ15, now) == (SeriesStatus.OK, 0)


async def test_a_bar_the_venue_has_not_yet_published_is_not_a_hole(db: Database) -> None:
    # 20:00:20 UTC: the 19:59 bar closed 20 s ago, inside the settling time.
    await store_bars(db, EQ1, at("2026-11-28 00:00"), at("2026-11-30 19:59"))
    assert await audit(db, EQ1, at("2026-11-30 20:00:20")) == (SeriesStatus.OK, 0)
    # Once settled, the same missing bar is a hole (one bar: DEGRADED, not STALE).
    assert await audit(db, EQ1, at("2026-11-30 20:01:00")) == (SeriesStatus.DEGRADED, 1)


async def test_a_venue_that_settles_slowly_is_judged_after_its_own_settling_time(
    db: Database,
) -> None:
    # A venue whose answer about a bar is final only 120 s after its close
    # (OANDA's incomplete candles): at 20:01:30 the 19:59 bar closed 90 s ago,
    # so it is "not yet" for that venue, though past the default 30 s.
    await store_bars(db, EQ1, at("2026-11-28 00:00"), at("2026-11-30 19:59"))
    slow = {"alpaca": timedelta(seconds=120)}
    assert await audit(db, EQ1, at("2026-11-30 20:01:30")) == (SeriesStatus.DEGRADED, 2)
    assert await audit(db, EQ1, at("2026-11-30 20:01:30"), slow) == (SeriesStatus.OK, 0)
    # Two minutes after its close, the same bar is a hole for that venue too.
    assert await audit(db, EQ1, at("2026-11-30 20:02:00"), slow) == (SeriesStatus.DEGRADED, 1)


async def test_over_a_weekend_the_friday_close_is_up_to_date(db: Database) -> None:
    # Friday 2026-12-04 closes 21:00 UTC; Saturday noon nothing is due.
    await store_bars(db, EQ1, at("2026-12-02 00:00"), at("2026-12-04 21:00"))
    assert await audit(db, EQ1, at("2026-12-05 12:00")) == (SeriesStatus.OK, 0)
    assert await audit(db, EQ1, at("2026-12-06 23:00")) == (SeriesStatus.OK, 0)


async def test_over_a_holiday_and_an_early_close_nothing_is_due(db: Database) -> None:
    # Thanksgiving (Thursday 2026-11-26) is closed; Friday closes at 13:00 New York (18:00 UTC).
    await store_bars(db, EQ1, at("2026-11-23 00:00"), at("2026-11-25 21:00"))
    assert await audit(db, EQ1, at("2026-11-26 18:00")) == (SeriesStatus.OK, 0)
    await store_bars(db, EQ1, at("2026-11-27 14:30"), at("2026-11-27 18:00"))
    assert await audit(db, EQ1, at("2026-11-27 22:00")) == (SeriesStatus.OK, 0)


async def test_a_series_listed_minutes_ago_is_ok_from_its_genesis(db: Database) -> None:
    now = at("2026-11-30 12:00:40")
    genesis = at("2026-11-30 11:55")
    async with db.pool.acquire() as conn:
        await set_genesis(conn, BTC, genesis, {"method": "test"})
    await store_bars(db, BTC, genesis, at("2026-11-30 12:00"))
    assert await audit(db, BTC, now) == (SeriesStatus.OK, 0)


async def test_a_crypto_stream_silent_past_the_allowance_is_stale(db: Database) -> None:
    await store_bars(db, BTC, at("2026-11-27 12:00"), at("2026-11-30 11:50"))
    # 12:00:40: bars 11:50 to 11:59 are settled and missing (10 minutes > 5).
    assert await audit(db, BTC, at("2026-11-30 12:00:40")) == (SeriesStatus.STALE, 10)


# --- what an audit reads of the hypertable ----------------------------------------


async def test_an_audit_reads_every_series_bounds_in_one_query(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The oldest and newest bar probe has no time bound, so planning it costs
    # every chunk of the hypertable: once an audit, not once a series
    # (bench/growth.py: the incremental audit grew with the store).
    from candled import healer as healer_module

    calls: list[list[SeriesKey]] = []
    real = healer_module.stored_bounds

    async def spy(conn: object, keys: Sequence[SeriesKey]) -> object:
        calls.append(list(keys))
        return await real(conn, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(healer_module, "stored_bounds", spy)
    for key in (BTC, EQ1):
        await store_bars(db, key, at("2026-11-29 00:00"), at("2026-11-30 12:00"))
    healer = Healer(db.pool, specs(), interval=timedelta(minutes=15), clock=lambda: T0)
    results = await healer.audit(full=True)
    assert calls == [sorted(specs())]
    bounds = {r.key: (r.first_ts, r.last_ts) for r in results}
    assert bounds[BTC] == (at("2026-11-29 00:00"), at("2026-11-30 11:59"))
    assert bounds[EQ15] == (None, None)


async def test_audit_bounds_are_every_stored_bar_and_bars_stored_meanwhile(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bars before the lookback and after the settled end are stored bars too.
    await store_bars(db, BTC, at("2026-11-20 00:00"), at("2026-11-20 01:00"))
    await store_bars(db, BTC, at("2026-11-29 00:00"), at("2026-11-30 12:01"))
    healer = Healer(db.pool, specs(), interval=timedelta(minutes=15), clock=lambda: T0)
    (result,) = await healer.audit([BTC], full=True)
    assert (result.first_ts, result.last_ts) == (at("2026-11-20 00:00"), at("2026-11-30 12:00"))
    assert result.status is SeriesStatus.DEGRADED
    # Bars stored after the bounds were read, found by the audit's scans, count:
    # a series whose first bars came meanwhile is not MISSING (DEGRADED: the
    # lookback begins two days before its first bar).
    from candled import healer as healer_module

    async def read_before_any_bar(conn: object, keys: Sequence[SeriesKey]) -> dict[object, object]:
        return {}

    monkeypatch.setattr(healer_module, "stored_bounds", read_before_any_bar)
    (result,) = await healer.audit([BTC], full=True)
    # The scans end at the newest settled bar (11:58, closed 11:59 < 12:00 - 30 s).
    assert (result.first_ts, result.last_ts) == (at("2026-11-29 00:00"), at("2026-11-30 11:58"))
    assert result.status is SeriesStatus.DEGRADED
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, first_ts, last_ts FROM series_status WHERE symbol = $1", BTC.symbol
        )
    assert row is not None
    assert tuple(row) == ("DEGRADED", at("2026-11-29 00:00"), at("2026-11-30 11:58"))
