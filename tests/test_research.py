"""Research access against the real store: `read_candles`, `load_candles`, `candled export`.

One world per test, in a fresh migrated TimescaleDB database: a crypto series
(binance BTCUSDT 1m) and an equity series (alpaca AAPL 1m, NYSE) around one
NYSE session taken from the calendar, the latest that ended more than a day
before now, so every case is the same at any hour (and under
`CANDLED_TEST_AT`). Each series has a hole (bars missing) and a range the
venue confirmed empty; the equity series also has a bar the calendar does not
expect (after the close).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest

import candled
from candled import calendars, clock, research
from candled.cli import main
from candled.domain import Candle, DataProfile, SeriesKey
from candled.domain.ranges import Range
from candled.gaps import RepairState
from candled.research import FIELDS, load_candles, read_candles
from candled.store import healing
from candled.store.series import set_genesis, sync_configured
from candled.store.writer import CandleStore

BTC = SeriesKey("binance", "BTCUSDT", "1m")
AAPL = SeriesKey("alpaca", "AAPL", "1m")
M = timedelta(minutes=1)


def minutes(a: datetime, b: datetime) -> list[datetime]:
    return list(BTC.tf.bars(a, b))


def in_ranges(ts: datetime, ranges: list[Range]) -> bool:
    return any(a <= ts < b for a, b in ranges)


@dataclass
class World:
    dsn: str
    session: Range  # the NYSE session
    start: datetime  # the window: two hours around the session
    end: datetime
    genesis: datetime  # BTC's
    stored: dict[SeriesKey, dict[datetime, tuple[float, ...]]]
    missing: dict[SeriesKey, list[Range]]
    confirmed: dict[SeriesKey, list[Range]]
    off_calendar: datetime  # an AAPL bar after the close

    def expected(self, key: SeriesKey, index: list[datetime] | None = None) -> pd.DataFrame:
        """What the store holds for `key` in the window, reindexed on `index` if given."""
        bars = {ts: v for ts, v in self.stored[key].items() if self.start <= ts < self.end}
        frame = pd.DataFrame.from_dict(bars, orient="index", columns=list(FIELDS), dtype=float)
        frame.index = pd.DatetimeIndex(frame.index, name="ts").tz_convert("UTC").as_unit("us")
        frame = frame.sort_index()
        if index is not None:
            frame = frame.reindex(pd.DatetimeIndex(index, name="ts").as_unit("us"))
        return frame


def last_session() -> Range:
    """The latest NYSE session that ended more than a day before now."""
    now = clock.now()
    cutoff = now - timedelta(days=1)
    found = calendars.sessions(DataProfile.EQUITY, "XNYS", now - timedelta(days=20), cutoff)
    return [s for s in found if s[1] < cutoff][-1]


def ohlcv(ts: datetime, base: float) -> tuple[float, ...]:
    i = int(ts.timestamp()) // 60 % 997
    o = base + 0.25 * i
    return (o, o + 1.5, o - 1.25, o + 0.5, float(i % 5))  # volume 0.0 on some bars


@pytest.fixture
async def world(migrated: str) -> World:
    session = last_session()
    start, end = session[0] - 2 * 60 * M, session[1] + 2 * 60 * M
    genesis = start + 30 * M
    s0 = session[0]
    missing = {BTC: [(s0 + 60 * M, s0 + 65 * M)], AAPL: [(s0 + 30 * M, s0 + 32 * M)]}
    confirmed = {BTC: [(s0 + 120 * M, s0 + 123 * M)], AAPL: [(session[1] - 10 * M, session[1])]}
    off = session[1] + 60 * M
    stored = {
        BTC: {
            ts: ohlcv(ts, 40_000.0)
            # and up to a day more after the window (never a bar not yet closed)
            for ts in minutes(
                genesis, min(end + timedelta(days=1), BTC.tf.floor(clock.now()) - 60 * M)
            )
            if not in_ranges(ts, missing[BTC] + confirmed[BTC])
        },
        AAPL: {
            ts: ohlcv(ts, 150.0)
            for ts in [*minutes(*session), off]
            if not in_ranges(ts, missing[AAPL] + confirmed[AAPL])
        },
    }
    conn = await asyncpg.connect(migrated)
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=2)
    try:
        ids = await sync_configured(
            conn, {BTC: (DataProfile.CRYPTO, ""), AAPL: (DataProfile.EQUITY, "XNYS")}
        )
        await set_genesis(conn, BTC, genesis, {"how": "test"})
        await CandleStore(pool).write(
            [Candle(k, ts, *v) for k, bars in stored.items() for ts, v in bars.items()]
        )
        # As the healer records a range the venue answered empty enough times.
        for key, ranges in confirmed.items():
            for r in ranges:
                state = RepairState(1, None, confirmed_empty=True)
                await healing.save_empty_state(conn, ids[key], r, state, r[1])
    finally:
        await pool.close()
        await conn.close()
    return World(migrated, session, start, end, genesis, stored, missing, confirmed, off)


# --- one series -------------------------------------------------------------------


def test_a_crypto_series_is_its_stored_bars_on_utc_open_times(world: World) -> None:
    frame = read_candles(world.dsn, "binance:BTCUSDT:1m", world.start, world.end)
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert frame.index.name == "ts" and str(frame.index.dtype) == "datetime64[us, UTC]"
    assert (frame.dtypes == "float64").all()
    pd.testing.assert_frame_equal(frame, world.expected(BTC))
    # From the genesis (nothing before), half-open at the end; the hole and
    # the confirmed-empty bars are absent rows.
    assert frame.index[0] == world.genesis and frame.index[-1] == world.end - M
    for ts in minutes(*world.missing[BTC][0]) + minutes(*world.confirmed[BTC][0]):
        assert ts not in frame.index
    assert len(frame) == (world.end - world.genesis) // M - 5 - 3


def test_an_equity_series_on_its_calendar(world: World) -> None:
    s_open, s_close = world.session
    stored = read_candles(world.dsn, AAPL, world.start.isoformat(), world.end.isoformat())
    pd.testing.assert_frame_equal(stored, world.expected(AAPL))
    assert world.off_calendar in stored.index

    # Every bar NYSE expects in the session (from the calendar, early close or
    # not), plus the stored bar it does not expect; NaN where nothing is stored.
    grid = read_candles(world.dsn, AAPL, world.start, world.end, how="calendar")
    session_bars = minutes(s_open, s_close)
    assert list(grid.index) == [*session_bars, world.off_calendar]
    pd.testing.assert_frame_equal(grid, world.expected(AAPL, list(grid.index)))
    nan_rows = set(grid.index[grid.isna().all(axis=1)])
    hole = set(minutes(*world.missing[AAPL][0]))
    empty = set(minutes(*world.confirmed[AAPL][0]))
    assert nan_rows == hole | empty
    assert grid.notna().all(axis=1).sum() == len(stored)

    # empty="drop": confirmed-empty bars leave the grid, so the NaN rows are the hole.
    dropped = read_candles(world.dsn, AAPL, world.start, world.end, how="calendar", empty="drop")
    assert set(dropped.index) == set(grid.index) - empty
    assert set(dropped.index[dropped.isna().all(axis=1)]) == hole


def test_a_crypto_calendar_grid_starts_at_the_genesis(world: World) -> None:
    grid = read_candles(world.dsn, BTC, world.start, world.end, how="calendar")
    assert list(grid.index) == minutes(world.genesis, world.end)
    nan_rows = set(grid.index[grid.isna().all(axis=1)])
    assert nan_rows == set(minutes(*world.missing[BTC][0]) + minutes(*world.confirmed[BTC][0]))


def test_the_calendar_grid_ends_at_the_last_closed_bar(world: World) -> None:
    before = clock.now()
    frame = read_candles(
        world.dsn, BTC, before - timedelta(minutes=30), before + timedelta(hours=1), how="calendar"
    )
    after = clock.now()
    assert frame.index[-1] in (BTC.tf.floor(before) - M, BTC.tf.floor(after) - M)
    assert frame.isna().all().all()  # nothing stored in the last hour


# --- several series ---------------------------------------------------------------


def test_several_series_share_one_index(world: World) -> None:
    names = [str(BTC), str(AAPL)]
    frame = read_candles(world.dsn, names, world.start, world.end)
    assert frame.columns.names == ["series", "field"]
    assert list(frame.columns) == [(n, f) for n in names for f in FIELDS]
    union = sorted(set(world.expected(BTC).index) | set(world.expected(AAPL).index))
    assert list(frame.index) == union
    pd.testing.assert_frame_equal(frame[str(BTC)], world.expected(BTC, union), check_names=False)
    pd.testing.assert_frame_equal(frame[str(AAPL)], world.expected(AAPL, union), check_names=False)
    # Before the open, only the crypto series has bars.
    assert frame.loc[world.session[0] - M, str(AAPL)].isna().all()
    assert frame.loc[world.session[0] - M, str(BTC)].notna().all()

    inner = read_candles(world.dsn, names, world.start, world.end, how="inner")
    both = sorted(set(world.expected(BTC).index) & set(world.expected(AAPL).index))
    assert list(inner.index) == both and not inner.isna().any().any()

    grid = read_candles(world.dsn, [AAPL, BTC], world.start, world.end, how="calendar")
    assert list(grid.columns.get_level_values("series").unique()) == [str(AAPL), str(BTC)]
    assert list(grid.index) == minutes(world.genesis, world.end)  # BTC's grid covers AAPL's

    # A list of one is still (series, field); a series listed twice is one column group.
    one = read_candles(world.dsn, [BTC, str(BTC)], world.start, world.end)
    assert list(one.columns.get_level_values(0).unique()) == [str(BTC)]
    pd.testing.assert_frame_equal(one[str(BTC)], world.expected(BTC), check_names=False)


def test_a_series_with_no_bar_in_the_window_is_all_nan(world: World) -> None:
    before = world.session[0] - 90 * M  # AAPL stores nothing before the open
    frame = read_candles(world.dsn, [BTC, AAPL], before, world.session[0])
    assert len(frame) == 90 and frame[str(AAPL)].isna().all().all()
    alone = read_candles(world.dsn, AAPL, before, world.session[0])
    assert alone.empty and list(alone.columns) == list(FIELDS)
    assert str(alone.index.dtype) == "datetime64[us, UTC]"


# --- inside a running event loop ----------------------------------------------------


async def test_read_candles_inside_a_running_loop(world: World) -> None:
    # As in Jupyter: the caller's thread runs an event loop already.
    loop = asyncio.get_running_loop()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    frame = candled.read_candles(world.dsn, [BTC, AAPL], world.start, world.end)
    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=1)
    try:
        same = await load_candles(pool, [BTC, AAPL], world.start, world.end)
    finally:
        await pool.close()
    pd.testing.assert_frame_equal(frame, same)
    conn = await asyncpg.connect(world.dsn)
    try:  # a connection of the caller's, inside the caller's own transaction
        async with conn.transaction():
            in_xact = await load_candles(conn, [BTC, AAPL], world.start, world.end)
    finally:
        await conn.close()
    pd.testing.assert_frame_equal(frame, in_xact)
    await loop.create_task(tick())  # the caller's loop is untouched and still runs
    assert ticks == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("candled-read")]


def test_package_attribute_is_lazy() -> None:
    assert candled.read_candles is read_candles
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = candled.nope  # type: ignore[attr-defined]


# --- bad arguments ---------------------------------------------------------------------


def test_bad_arguments_are_clear_errors(world: World) -> None:
    s, e = world.start, world.end
    cases: list[tuple[dict[str, object], str]] = [
        ({"series": "BTCUSDT"}, "expected VENUE:SYMBOL:TIMEFRAME"),
        ({"series": "binance:BTCUSDT:7m"}, "7m"),
        ({"series": []}, "no series given"),
        ({"series": 42}, "expected 'VENUE:SYMBOL:TF'"),
        ({"series": ["binance:ETHUSDT:1m", BTC, "x:Y:1h"]}, r"unknown series .*binance:ETHUSDT:1m, x:Y:1h$"),
        ({"start": datetime(2026, 1, 5)}, "has no timezone"),
        ({"start": "last tuesday"}, "not an ISO 8601 date/time"),
        ({"start": e, "end": s}, "must be before end"),
        ({"start": s, "end": s}, "must be before end"),
        ({"how": "left"}, "how='left': expected 'outer', 'inner' or 'calendar'"),
        ({"empty": "zero"}, "empty='zero': expected 'nan' or 'drop'"),
    ]  # fmt: skip
    for change, message in cases:
        args: dict[str, object] = {"series": BTC, "start": s, "end": e, **change}
        with pytest.raises(ValueError, match=message):
            read_candles(world.dsn, **args)  # type: ignore[arg-type]


def test_times_are_utc(world: World) -> None:
    s = world.session[0]
    ny = s.astimezone(calendars.library.calendar_tz("XNYS"))
    frame = read_candles(world.dsn, AAPL, ny, s + 10 * M)  # an aware time in any zone
    assert frame.index[0] == s and len(frame) == 10
    naive = s.replace(tzinfo=None).isoformat()  # an ISO string without an offset is UTC
    assert read_candles(world.dsn, AAPL, naive, s + 10 * M).equals(frame)
    assert read_candles(world.dsn, AAPL, pd.Timestamp(s), s + 10 * M).equals(frame)


# --- export -------------------------------------------------------------------------------


@pytest.fixture
def cli(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config whose database is the world's (the series need not be configured)."""
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nlog_level = "warning"\nstate_dir = "{tmp_path / "state"}"\n')
    monkeypatch.setenv("CANDLED_DATABASE_URL", world.dsn)
    yield config


def export(config: Path, *args: str) -> int:
    return main(["export", "--config", str(config), *args])


def read_csv(path: Path, levels: int = 1) -> pd.DataFrame:
    header = 0 if levels == 1 else list(range(levels))
    return pd.read_csv(path, index_col=0, header=header, parse_dates=True)


def test_export_round_trips_csv_and_parquet(
    world: World, cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small windows, so the export is many of them and must still equal one read.
    monkeypatch.setattr(research, "_WINDOW_BARS", 45)
    since, until = world.start.isoformat(), world.end.isoformat()
    for how in ("outer", "calendar"):
        one = read_candles(world.dsn, BTC, world.start, world.end, how=how)
        both = read_candles(world.dsn, [BTC, AAPL], world.start, world.end, how=how)
        for ext in ("csv", "parquet"):
            single, multi = tmp_path / f"one-{how}.{ext}", tmp_path / f"both-{how}.{ext}"
            assert export(cli, "--series", str(BTC), "--since", since, "--until", until,
                          "--out", str(single), "--how", how) == 0  # fmt: skip
            assert export(cli, "--series", str(BTC), str(AAPL), "--since", since,
                          "--until", until, "--out", str(multi), "--how", how) == 0  # fmt: skip
            if ext == "csv":
                back_one, back_both = read_csv(single), read_csv(multi, levels=2)
            else:
                back_one, back_both = pd.read_parquet(single), pd.read_parquet(multi)
            pd.testing.assert_frame_equal(back_one, one, check_freq=False)
            pd.testing.assert_frame_equal(back_both, both, check_freq=False)
    assert sorted(p.name for p in tmp_path.glob(".*tmp")) == []  # no temporary left


def test_export_csv_is_iso_utc_and_exact(world: World, cli: Path, tmp_path: Path) -> None:
    out = tmp_path / "aapl.csv"
    s = world.session[0]
    assert export(cli, "--series", str(AAPL), "--since", s.isoformat(),
                  "--until", (s + 2 * M).isoformat(), "--out", str(out)) == 0  # fmt: skip
    lines = out.read_text().splitlines()
    v = world.stored[AAPL][s]
    assert lines[0] == "ts,open,high,low,close,volume"
    assert lines[1] == f"{s:%Y-%m-%dT%H:%M:%S}+00:00," + ",".join(repr(x) for x in v)
    assert len(lines) == 3


def test_export_with_durations_before_now(world: World, cli: Path, tmp_path: Path) -> None:
    # --since reaches before BTC's genesis; --until ends inside the day of bars after the window.
    now = clock.now()
    hours = timedelta(hours=1)
    since, until = (now - world.genesis) // hours + 1, (now - world.end) // hours
    out = tmp_path / "recent.csv"
    assert export(cli, "--series", str(BTC), "--since", f"{since}h", "--until", f"{until}h",
                  "--out", str(out)) == 0  # fmt: skip
    frame = read_csv(out)
    assert frame.index[0] == world.genesis
    last = frame.index[-1]
    assert now - until * hours - 2 * M <= last < clock.now() - until * hours
    window = read_candles(world.dsn, BTC, world.genesis, last + M)
    pd.testing.assert_frame_equal(frame, window, check_freq=False)


def test_export_errors(
    world: World,
    cli: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    span = ["--since", world.start.isoformat(), "--until", world.end.isoformat()]

    def fails(code: int, message: str, *args: str) -> None:
        capsys.readouterr()
        assert export(cli, *args) == code
        err = capsys.readouterr().err
        assert message in err, err

    fails(2, "candled export: unknown series (never stored): binance:ETHUSDT:1m",
          "--series", str(BTC), "binance:ETHUSDT:1m", *span, "--out", str(tmp_path / "a.csv"))  # fmt: skip
    fails(2, "use .csv or .parquet",
          "--series", str(BTC), *span, "--out", str(tmp_path / "a.xlsx"))  # fmt: skip
    fails(2, "no such directory",
          "--series", str(BTC), *span, "--out", str(tmp_path / "nope" / "a.csv"))  # fmt: skip
    fails(2, "must be before end", "--series", str(BTC), "--since", world.end.isoformat(),
          "--until", world.start.isoformat(), "--out", str(tmp_path / "a.csv"))  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    fails(1, "pip install 'candled[parquet]'",
          "--series", str(BTC), *span, "--out", str(tmp_path / "a.parquet"))  # fmt: skip
    assert list(tmp_path.glob("a.*")) == []
    # Arguments argparse refuses: exit 2 with the usage line.
    for args in (["--since", "1d", "--out", "x.csv"],
                 ["--series", "BTCUSDT", "--since", "1d", "--out", "x.csv"],
                 ["--series", str(BTC), "--since", "yesterday", "--out", "x.csv"],
                 ["--series", str(BTC), "--since", "1d", "--out", "x.csv", "--how", "left"]):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            export(cli, *args)
        assert exited.value.code == 2


def test_export_of_nothing_writes_the_header(world: World, cli: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.csv"
    before = world.start - timedelta(days=3)
    assert export(cli, "--series", str(AAPL), "--since", before.isoformat(),
                  "--until", (before + timedelta(hours=1)).isoformat(), "--out", str(out)) == 0  # fmt: skip
    assert out.read_text().splitlines() == ["ts,open,high,low,close,volume"]
    empty = pd.read_parquet(_parquet(cli, tmp_path, AAPL, before, before + timedelta(hours=1)))
    assert empty.empty and list(empty.columns) == list(FIELDS)
    assert np.dtype(empty["close"].dtype) == np.float64


def _parquet(cli: Path, tmp_path: Path, key: SeriesKey, a: datetime, b: datetime) -> Path:
    out = tmp_path / f"{key.symbol}-{a:%H%M}.parquet"
    code = export(cli, "--series", str(key), "--since", a.isoformat(), "--until", b.isoformat(),
                  "--out", str(out))  # fmt: skip
    assert code == 0
    return out


def test_utc_time_reads_iso_strings() -> None:
    assert research.utc_time("2026-01-05") == datetime(2026, 1, 5, tzinfo=UTC)
    assert research.utc_time("2026-01-05T14:30Z") == datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    assert research.utc_time("2026-01-05T09:30-05:00") == datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


async def test_series_start_plans_only_the_chunks_before_the_genesis(migrated: str) -> None:
    # Each read asks where a series starts (its genesis, or an older stored
    # bar). A probe of candle_data without a time bound plans, and locks,
    # every chunk of the hypertable, a cost growing with the store (bench
    # growth); bound by the genesis, only the chunks before it.
    from candled.store.series import series_metadata

    day = timedelta(days=1)
    eth, sol = SeriesKey("binance", "ETHUSDT", "1d"), SeriesKey("binance", "SOLUSDT", "1d")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conn = await asyncpg.connect(migrated)
    try:
        ids = await sync_configured(conn, {k: (DataProfile.CRYPTO, "") for k in (BTC, eth, sol)})
        rows = [
            (ids[key], t0 + i * day, 1.0, 1.0, 1.0, 1.0, 1.0)
            for key, skip in ((BTC, 0), (eth, 0), (sol, 10))
            for i in range(skip, 70)
        ]
        await conn.copy_records_to_table(
            "candle_data", records=rows,
            columns=("series_id", "ts", "open", "high", "low", "close", "volume"),
        )  # fmt: skip
        await set_genesis(conn, BTC, t0, {"method": "test"})
        await set_genesis(conn, eth, t0 + 20 * day, {"method": "test"})  # bars before it
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'candle_data'"
        )
        assert chunks >= 10
        locked = """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                    WHERE l.pid = pg_backend_pid() AND c.relname LIKE '\\_hyper\\_%\\_chunk'"""
        async with conn.transaction():
            meta = await series_metadata(conn, [BTC])
            assert meta[BTC].start == t0
            assert await conn.fetchval(locked) == 0
        meta = await series_metadata(conn, [eth, sol, BTC])
        assert [meta[k].start for k in (eth, sol, BTC)] == [t0, t0 + 10 * day, t0]
    finally:
        await conn.close()
