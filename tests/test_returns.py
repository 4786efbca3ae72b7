"""Neutral alignment: returns on a union grid, 0.0 for holes, NaN before a series starts."""

from __future__ import annotations

import importlib.util
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pandas as pd
import pytest

from candled.domain import Candle, DataProfile, SeriesKey
from candled.research import load_returns
from candled.returns import SeriesSpec, align_returns, grid_for, write_frame
from candled.store.migrations import migrate
from candled.store.series import set_genesis, sync_configured
from candled.store.writer import CandleStore

NAN = math.nan
H = timedelta(hours=1)
T0 = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
# Friday 2025-01-10 00:00 to Tuesday 00:00 UTC: a weekend in January (New York on EST).
FRI, TUE = datetime(2025, 1, 10, tzinfo=UTC), datetime(2025, 1, 14, tzinfo=UTC)
BTC = SeriesKey("binance", "BTCUSDT", "1h")
AAPL = SeriesKey("nasdaq", "AAPL", "1h")


def hours(start: datetime, n: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="1h")


def series(closes: dict[datetime, float]) -> pd.Series:
    return pd.Series(list(closes.values()), index=pd.DatetimeIndex(list(closes)), dtype=float)


def column(frame: pd.DataFrame, key: SeriesKey) -> list[float]:
    return [float(v) for v in frame[str(key)]]


def assert_values(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w), (i, got, want)


# XNYS in January: 14:30-21:00 UTC, so the 1h bars opening 14:00 ... 20:00 are expected.
def equity_bars(day: datetime) -> list[datetime]:
    return [day + timedelta(hours=h) for h in range(14, 21)]


# --- align_returns (pure) ---------------------------------------------------------


def test_missing_bar_is_zero_and_the_next_return_spans_the_gap() -> None:
    grid = hours(T0, 5)
    closes = series({T0: 100.0, T0 + H: 110.0, T0 + 3 * H: 121.0, T0 + 4 * H: 121.0})
    frame = align_returns({BTC: closes}, grid, {BTC: T0})
    assert list(frame.columns) == ["binance:BTCUSDT:1h"]
    assert frame.index.equals(grid) and str(frame.index.tz) == "UTC"
    # first present bar: NaN; bar 2 missing: 0.0; bar 3 is 121 / 110 - 1.
    assert_values(column(frame, BTC), [NAN, 0.1, 0.0, 0.1, 0.0])
    # Compounding the column gives the total return, hole or not.
    assert (1 + frame[str(BTC)].fillna(0)).prod() == pytest.approx(121 / 100)


def test_before_genesis_is_nan_and_a_hole_after_it_is_zero() -> None:
    grid = hours(T0, 6)
    closes = series({T0 + 3 * H: 50.0, T0 + 4 * H: 55.0, T0 + 5 * H: 44.0})
    frame = align_returns({BTC: closes}, grid, {BTC: T0 + 2 * H})
    # bar 2 is at genesis but missing: a hole (0.0); bar 3 has no previous close.
    assert_values(column(frame, BTC), [NAN, NAN, 0.0, NAN, 0.1, -0.2])


def test_unknown_genesis_starts_at_the_first_stored_bar() -> None:
    grid = hours(T0, 5)
    closes = series({T0 + 2 * H: 10.0, T0 + 4 * H: 12.0})
    for genesis in ({BTC: None}, {}):
        frame = align_returns({BTC: closes}, grid, genesis)
        assert_values(column(frame, BTC), [NAN, NAN, NAN, 0.0, 0.2])


def test_a_bar_before_a_stale_genesis_still_counts() -> None:
    grid = hours(T0, 3)
    closes = series({T0: 10.0, T0 + H: 11.0, T0 + 2 * H: 11.0})
    frame = align_returns({BTC: closes}, grid, {BTC: T0 + 2 * H})
    assert_values(column(frame, BTC), [NAN, 0.1, 0.0])


def test_closes_off_the_grid_are_ignored_and_spanned() -> None:
    grid = pd.DatetimeIndex([T0, T0 + 2 * H, T0 + 3 * H])  # T0 + 1h is not expected
    closes = series({T0: 100.0, T0 + H: 500.0, T0 + 2 * H: 90.0, T0 + 3 * H: 99.0})
    frame = align_returns({BTC: closes}, grid, {BTC: T0})
    assert_values(column(frame, BTC), [NAN, -0.1, 0.1])


def test_series_with_no_closes() -> None:
    grid = hours(T0, 3)
    empty = pd.Series([], dtype=float)
    frame = align_returns({BTC: empty, AAPL: empty}, grid, {BTC: T0 + H})
    assert_values(column(frame, BTC), [NAN, 0.0, 0.0])  # known to exist, nothing stored
    assert_values(column(frame, AAPL), [NAN, NAN, NAN])  # nothing known


def test_bad_inputs_are_rejected() -> None:
    grid = hours(T0, 3)
    with pytest.raises(ValueError, match="timezone-aware"):
        align_returns({}, pd.DatetimeIndex([datetime(2025, 1, 6)]), {})
    with pytest.raises(ValueError, match="sorted"):
        align_returns({}, grid[::-1], {})
    naive = pd.Series([1.0], index=pd.DatetimeIndex([datetime(2025, 1, 6)]))
    with pytest.raises(ValueError, match="closes of binance:BTCUSDT:1h"):
        align_returns({BTC: naive}, grid, {})
    twice = pd.Series([1.0, 2.0], index=pd.DatetimeIndex([T0, T0]))
    with pytest.raises(ValueError, match="duplicate"):
        align_returns({BTC: twice}, grid, {})


# --- grid_for and two markets ------------------------------------------------------


def test_grid_is_the_union_of_crypto_and_equity_sessions() -> None:
    crypto = SeriesSpec(BTC, DataProfile.CRYPTO)
    equity = SeriesSpec(AAPL, DataProfile.EQUITY, "XNYS")
    assert list(grid_for([equity], FRI, TUE)) == equity_bars(FRI) + equity_bars(FRI + 3 * 24 * H)
    grid = grid_for([equity, crypto], FRI, TUE)
    assert list(grid) == [FRI + i * H for i in range(96)]
    assert grid.name == "ts" and str(grid.tz) == "UTC"


def test_grid_of_two_exchanges_is_their_union() -> None:
    nyse = SeriesSpec(AAPL, DataProfile.EQUITY, "XNYS")
    lse = SeriesSpec(SeriesKey("lse", "VOD", "1h"), DataProfile.EQUITY, "XLON")
    grid = grid_for([nyse, lse], FRI, FRI + 24 * H)  # London 08:00-16:30 UTC, New York 14:30-21:00
    assert list(grid) == [FRI + h * H for h in range(8, 21)]
    assert len(grid_for([nyse, lse], FRI + 24 * H, FRI + 72 * H)) == 0  # the weekend


def test_grid_needs_one_timeframe() -> None:
    minute = SeriesSpec(SeriesKey("binance", "ETHUSDT", "1m"), DataProfile.CRYPTO)
    with pytest.raises(ValueError, match=r"binance:BTCUSDT:1h, binance:ETHUSDT:1m"):
        grid_for([SeriesSpec(BTC, DataProfile.CRYPTO), minute], FRI, TUE)
    with pytest.raises(ValueError, match="no series"):
        grid_for([], FRI, TUE)


def test_monthly_grid() -> None:
    key = SeriesKey("binance", "BTCUSDT", "1M")
    grid = grid_for([SeriesSpec(key, DataProfile.CRYPTO)], T0, datetime(2025, 4, 1, tzinfo=UTC))
    assert list(grid) == [datetime(2025, m, 1, tzinfo=UTC) for m in (2, 3)]


def test_equity_reads_zero_over_the_weekend_and_monday_spans_it() -> None:
    crypto = SeriesSpec(BTC, DataProfile.CRYPTO, genesis=FRI)
    equity = SeriesSpec(AAPL, DataProfile.EQUITY, "XNYS")  # genesis unknown
    grid = grid_for([crypto, equity], FRI, TUE)
    mon = FRI + 3 * 24 * H
    btc = {FRI + i * H: 100.0 + i for i in range(96)}
    aapl = {ts: 200.0 + i for i, ts in enumerate(equity_bars(FRI) + equity_bars(mon))}
    frame = align_returns({BTC: series(btc), AAPL: series(aapl)}, grid, {BTC: FRI, AAPL: None})
    r = frame[str(AAPL)]
    assert r[: FRI + 14 * H].isna().all()  # before its first stored bar, and that bar
    assert r[FRI + 15 * H] == pytest.approx(201 / 200 - 1)
    assert (r[FRI + 21 * H : mon + 13 * H] == 0.0).all()  # Friday night, weekend, Monday morning
    assert r[mon + 14 * H] == pytest.approx(207 / 206 - 1)  # Monday open against Friday close
    assert r[mon + 21 * H :].eq(0.0).all()
    assert frame[str(BTC)].iloc[1:].tolist() == pytest.approx(
        [(101.0 + i) / (100.0 + i) - 1 for i in range(95)]
    )


# --- write_frame -------------------------------------------------------------------


def test_write_frame_rejects_other_formats(tmp_path: Path) -> None:
    frame = align_returns({}, hours(T0, 2), {})
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_frame(frame, tmp_path / "out.xlsx")


def test_parquet_without_pyarrow_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    frame = align_returns({}, hours(T0, 2), {})
    with pytest.raises(ImportError, match="pip install pyarrow"):
        write_frame(frame, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []


def test_csv_has_iso_utc_timestamps(tmp_path: Path) -> None:
    frame = align_returns({BTC: series({T0: 100.0, T0 + 2 * H: 103.0})}, hours(T0, 3), {})
    write_frame(frame, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines() == [
        "ts,binance:BTCUSDT:1h",
        "2025-01-06T00:00:00+00:00,",
        "2025-01-06T01:00:00+00:00,0.0",
        "2025-01-06T02:00:00+00:00,0.030000000000000027",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary left behind


# --- load_returns on the store -----------------------------------------------------


async def test_load_returns_from_the_store_and_export_csv(tsdb_dsn: str, tmp_path: Path) -> None:
    mon = FRI + 3 * 24 * H
    conn = await asyncpg.connect(tsdb_dsn)
    pool = await asyncpg.create_pool(tsdb_dsn, min_size=1, max_size=2)
    try:
        await migrate(conn)
        await sync_configured(
            conn, {BTC: (DataProfile.CRYPTO, ""), AAPL: (DataProfile.EQUITY, "XNYS")}
        )
        btc_genesis = FRI + 2 * H
        await set_genesis(conn, BTC, btc_genesis, {"how": "test"})
        btc = {btc_genesis + i * H: 1000.0 + 10 * i for i in range(94)}
        aapl_times = equity_bars(FRI - 24 * H) + equity_bars(FRI) + equity_bars(mon)
        aapl = {ts: 100.0 + i for i, ts in enumerate(aapl_times)}  # Thursday: before the window
        await CandleStore(pool).write(
            [Candle(BTC, ts, c, c, c, c, 1.0) for ts, c in btc.items()]
            + [Candle(AAPL, ts, c, c, c, c, 1.0) for ts, c in aapl.items()]
        )
        # Holes the repair could not fill: one bar of each series.
        for key, ts in ((BTC, FRI + 10 * H), (AAPL, mon + 16 * H)):
            await conn.execute(
                """DELETE FROM candle_data WHERE ts = $4 AND series_id =
                   (SELECT id FROM series WHERE venue = $1 AND symbol = $2 AND timeframe = $3)""",
                key.venue,
                key.symbol,
                key.timeframe,
                ts,
            )

        frame = await load_returns(pool, [BTC, AAPL], FRI, TUE)
        assert list(frame.columns) == [str(BTC), str(AAPL)]
        assert len(frame) == 96
        out = tmp_path / "returns.csv"
        write_frame(frame, out)
        back = pd.read_csv(out, index_col="ts")
        back.index = pd.to_datetime(back.index, utc=True)

        assert back.index.equals(frame.index)
        b, a = back[str(BTC)], back[str(AAPL)]
        assert b[: btc_genesis - H].isna().all() and math.isnan(b[btc_genesis])
        assert b[FRI + 3 * H] == pytest.approx(1010 / 1000 - 1)
        assert b[FRI + 10 * H] == 0.0  # the hole
        assert b[FRI + 11 * H] == pytest.approx(1090 / 1070 - 1)  # spans it
        # AAPL has no genesis but Thursday's bars: the window starts inside its history,
        # so Friday's pre-open hours are 0.0 and its first bar in the window is NaN.
        assert (a[: FRI + 13 * H] == 0.0).all()
        assert math.isnan(a[FRI + 14 * H])
        assert a[FRI + 15 * H] == pytest.approx(108 / 107 - 1)
        assert (a[FRI + 21 * H : mon + 13 * H] == 0.0).all()
        assert a[mon + 14 * H] == pytest.approx(114 / 113 - 1)  # Monday open vs Friday close
        assert a[mon + 16 * H] == 0.0  # the hole
        assert a[mon + 17 * H] == pytest.approx(117 / 115 - 1)
        # Compounded, each column is the series' return over the window.
        assert (1 + b.fillna(0)).prod() == pytest.approx(btc[FRI + 95 * H] / btc[btc_genesis])
        assert (1 + a.fillna(0)).prod() == pytest.approx(120 / 107)

        with pytest.raises(ValueError, match="unknown series: nasdaq:MSFT:1h"):
            await load_returns(conn, [BTC, SeriesKey("nasdaq", "MSFT", "1h")], FRI, TUE)
        one = await load_returns(conn, [AAPL, AAPL], FRI, FRI + 24 * H)  # a connection works too
        assert list(one.columns) == [str(AAPL)] and len(one) == 7
    finally:
        await pool.close()
        await conn.close()
