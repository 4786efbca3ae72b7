"""Research access: candles from the store as pandas frames, and to files.

`read_candles(dsn, "binance:BTCUSDT:1m", start, end)` is synchronous: the
caller needs no event loop. It opens one connection to `dsn`, reads the
`candles` view in one read-only snapshot, and closes it. Where no event loop
runs in the calling thread it runs asyncpg on a private loop there (Ctrl-C
interrupts it); called from inside a running loop (Jupyter, an async
application), where a second loop cannot run in the same thread, it runs that
private loop in a worker thread and blocks the caller until the frame is
ready. Async code can `await load_candles(pool_or_conn, ...)` instead, which
has the same semantics and blocks nothing.

The frame (README, "Research"):

- index `ts`: bar open times, UTC (`datetime64[us, UTC]`), sorted, unique;
- one series (a string or a `SeriesKey`): float columns `open, high, low,
  close, volume`;
- a list of series: columns `(series, field)`, a MultiIndex whose first level
  is `VENUE:SYMBOL:TF` in the order given, on one index chosen by `how`:
  - `"outer"` (default): the union of the series' stored open times; a series
    with no bar at a row reads NaN there;
  - `"inner"`: only the open times where every series has a bar;
  - `"calendar"`: every bar the series' calendar expects (its profile and
    exchange calendar, as the healer judges: holidays and early closes
    included), from the series' start (its genesis, or its first stored bar
    when that is earlier or the genesis is unknown) to the last bar that has
    closed, plus any stored bar the calendar does not expect; bars not stored
    read NaN. Several series: the union of their grids.
- Confirmed-empty bars (ranges the venue answered empty and the healer
  recorded, README "Self-healing") are never stored, so they are absent like
  any other bar the store lacks; on the calendar grid they are NaN rows by
  default (`empty="nan"`: a regular grid), or left out with `empty="drop"`,
  so that on a one-series calendar frame every NaN row is a hole the store
  still lacks.

Nothing here writes to the store. `export` writes the same frame to CSV or
Parquet (the `parquet` extra) window by window, so memory stays bounded
however long the export: `candled export` (README, "Command line").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import math
import sys
from collections.abc import Callable, Collection, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import asyncpg
import numpy as np
import pandas as pd
from tqdm import tqdm

from candled import clock
from candled.calendars import FOREX_HOLIDAYS, Overrides
from candled.domain import SeriesKey, require_utc
from candled.domain.ranges import Range, merge_ranges
from candled.errors import CandledError
from candled.returns import SeriesSpec, align_returns, common_timeframe, grid_for
from candled.store.healing import empty_states
from candled.store.provision import open_database
from candled.store.series import SeriesMeta, series_metadata

__all__ = [
    "FIELDS",
    "How",
    "UnknownSeries",
    "export",
    "export_command",
    "load_candles",
    "read_candles",
    "utc_time",
]

FIELDS = ("open", "high", "low", "close", "volume")
How = Literal["outer", "inner", "calendar"]
Empty = Literal["nan", "drop"]
SeriesArg = str | SeriesKey | Sequence[str | SeriesKey]
TimeArg = datetime | str

# Store precision (the returns frames' too).
_UNIT = "us"
# `export` reads windows of about this many bars of the finest timeframe per series.
_WINDOW_BARS = 20_000
_DAY = timedelta(days=1)
_T = TypeVar("_T")


# --- reading -----------------------------------------------------------------------


def read_candles(
    dsn: str,
    series: SeriesArg,
    start: TimeArg,
    end: TimeArg | None = None,
    *,
    how: How = "outer",
    empty: Empty = "nan",
    overrides: Overrides | None = None,
) -> pd.DataFrame:
    """Candles of `series` opening in [start, end) (default end: now), from the store at `dsn`.

    `series` is `"VENUE:SYMBOL:TF"` (or a `SeriesKey`) for a frame with columns
    open, high, low, close, volume, or a list of them for `(series, field)`
    columns aligned by `how` ("outer", "inner" or "calendar"). `start` and
    `end` are timezone-aware datetimes or ISO strings (`"2026-01-05"`,
    `"2026-01-05T14:30Z"`; a string without an offset is UTC). `overrides`
    are calendar corrections for `how="calendar"`
    (`candled.calendars.load_overrides`). Semantics in the module docstring.

    Raises ValueError for bad arguments or a series the store has never seen.
    """
    keys, single = _series_arg(series)
    lo, hi = _window(start, end)
    _check_options(how, empty)

    async def main() -> pd.DataFrame:
        conn = await asyncpg.connect(dsn)
        try:
            return await _load(conn, keys, single, lo, hi, how, empty, overrides)
        finally:
            await conn.close()

    return _run_sync(main)


async def load_candles(
    conn: asyncpg.Connection | asyncpg.Pool,
    series: SeriesArg,
    start: TimeArg,
    end: TimeArg | None = None,
    *,
    how: How = "outer",
    empty: Empty = "nan",
    overrides: Overrides | None = None,
) -> pd.DataFrame:
    """`read_candles` for async code, on a connection or pool of the caller's."""
    keys, single = _series_arg(series)
    lo, hi = _window(start, end)
    _check_options(how, empty)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _load(c, keys, single, lo, hi, how, empty, overrides)
    return await _load(conn, keys, single, lo, hi, how, empty, overrides)


def utc_time(value: TimeArg, what: str = "time") -> datetime:
    """`value` as a UTC datetime: an aware datetime, or an ISO string (no offset: UTC).

    A naive datetime is refused: it is most often local time (`datetime.now()`).
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{what} {value!r}: not an ISO 8601 date/time, e.g. 2026-01-05 or 2026-01-05T14:30Z"
            ) from None
        return require_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), what)
    if not isinstance(value, datetime):
        raise ValueError(f"{what}: expected a datetime or an ISO string, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} {value.isoformat()} has no timezone: pass an aware datetime"
            " (tzinfo=UTC) or an ISO string"
        )
    aware: datetime = value
    if isinstance(value, pd.Timestamp):  # nanoseconds, if any, are below the store's precision
        aware = value.to_pydatetime(warn=False)
    return require_utc(aware, what)


def _series_arg(series: SeriesArg) -> tuple[list[SeriesKey], bool]:
    """The series asked for, once each in the order given, and whether only one was."""
    if isinstance(series, str | SeriesKey):
        return [_key(series)], True
    if not isinstance(series, Sequence):
        raise ValueError(f"series: expected 'VENUE:SYMBOL:TF' or a list of them, got {series!r}")
    keys = list(dict.fromkeys(_key(s) for s in series))
    if not keys:
        raise ValueError("no series given")
    return keys, False


def _key(value: object) -> SeriesKey:
    if isinstance(value, SeriesKey):
        return value
    if isinstance(value, str):
        return SeriesKey.parse(value)
    raise ValueError(f"series: expected 'VENUE:SYMBOL:TF', got {value!r}")


def _window(start: TimeArg, end: TimeArg | None) -> tuple[datetime, datetime]:
    lo = utc_time(start, "start")
    hi = clock.now() if end is None else utc_time(end, "end")
    if lo >= hi:
        raise ValueError(f"start {lo.isoformat()} must be before end {hi.isoformat()}")
    return lo, hi


def _check_options(how: str, empty: str) -> None:
    if how not in get_args(How):
        raise ValueError(f"how={how!r}: expected 'outer', 'inner' or 'calendar'")
    if empty not in get_args(Empty):
        raise ValueError(f"empty={empty!r}: expected 'nan' or 'drop'")


def _run_sync(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run `main()` to completion on a private event loop, never the caller's."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: run one here
        with asyncio.Runner() as runner:
            return runner.run(main())
    # Inside a running loop (Jupyter): a second loop cannot run in this thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="candled-read") as pool:
        return pool.submit(asyncio.run, main()).result()


async def _load(
    conn: asyncpg.Connection,
    keys: Sequence[SeriesKey],
    single: bool,
    start: datetime,
    end: datetime,
    how: How,
    empty: Empty,
    overrides: Overrides | None,
) -> pd.DataFrame:
    async with _snapshot(conn):
        meta = await _metadata(conn, keys)
        confirmed = (
            await _confirmed_empty(conn, meta) if how == "calendar" and empty == "drop" else {}
        )
        return await _frame(
            conn, keys, meta, confirmed, single, start, end, how, overrides, clock.now()
        )


def _snapshot(conn: asyncpg.Connection) -> AbstractAsyncContextManager[object]:
    """One snapshot for several queries (the daemon may write meanwhile), or,
    on a connection already in a transaction, that transaction's."""
    if conn.is_in_transaction():
        return contextlib.nullcontext()
    return conn.transaction(isolation="repeatable_read", readonly=True)  # type: ignore[no-any-return]


async def _metadata(
    conn: asyncpg.Connection, keys: Sequence[SeriesKey]
) -> dict[SeriesKey, SeriesMeta]:
    found = await series_metadata(conn, keys)
    unknown = [str(k) for k in keys if k not in found]
    if unknown:
        raise UnknownSeries(f"unknown series (never stored): {', '.join(unknown)}")
    return found


async def _confirmed_empty(
    conn: asyncpg.Connection, meta: dict[SeriesKey, SeriesMeta]
) -> dict[SeriesKey, list[Range]]:
    return {
        key: merge_ranges(
            r for r, st in (await empty_states(conn, m.id)).items() if st.confirmed_empty
        )
        for key, m in meta.items()
    }


async def _frame(
    conn: asyncpg.Connection,
    keys: Sequence[SeriesKey],
    meta: dict[SeriesKey, SeriesMeta],
    confirmed: dict[SeriesKey, list[Range]],
    single: bool,
    start: datetime,
    end: datetime,
    how: How,
    overrides: Overrides | None,
    now: datetime,
) -> pd.DataFrame:
    """The frame for [start, end): the same rows whether read whole or window by window."""
    frames = {key: await _stored(conn, key, start, end) for key in keys}
    if how == "calendar":
        index = _empty_index()
        for key, frame in frames.items():
            grid = _calendar_grid(key, meta[key], start, end, now, overrides)
            grid = _without(grid, confirmed.get(key, []))
            index = index.union(grid.union(frame.index))
    elif how == "inner":
        index = frames[keys[0]].index
        for frame in frames.values():
            index = index.intersection(frame.index)
    else:
        index = _empty_index()
        for frame in frames.values():
            index = index.union(frame.index)
    index = pd.DatetimeIndex(index, freq=None, name="ts").as_unit(_UNIT)
    if single:
        return frames[keys[0]].reindex(index)
    return pd.concat(
        [frames[k].reindex(index) for k in keys],
        axis=1,
        keys=[str(k) for k in keys],
        names=["series", "field"],
    )


async def _stored(
    conn: asyncpg.Connection, key: SeriesKey, start: datetime, end: datetime
) -> pd.DataFrame:
    """The stored bars of `key` opening in [start, end), from the `candles` view."""
    # The view joins series to candle_data; its primary key (series_id, ts) serves the range.
    rows = await conn.fetch(
        """SELECT ts, open, high, low, close, volume FROM candles
           WHERE venue = $1 AND symbol = $2 AND timeframe = $3 AND ts >= $4 AND ts < $5
           ORDER BY ts""",
        key.venue,
        key.symbol,
        key.timeframe,
        start,
        end,
    )
    if not rows:
        values = np.empty((0, len(FIELDS)), dtype=float)
        index = _empty_index()
    else:
        values = np.array([tuple(r)[1:] for r in rows], dtype=float)
        index = pd.DatetimeIndex([r[0] for r in rows]).tz_convert("UTC").as_unit(_UNIT)
    index.name = "ts"
    return pd.DataFrame(values, index=index, columns=list(FIELDS))


def _calendar_grid(
    key: SeriesKey,
    meta: SeriesMeta,
    start: datetime,
    end: datetime,
    now: datetime,
    overrides: Overrides | None,
) -> pd.DatetimeIndex:
    """The bars `key`'s calendar expects from its start, up to the last that has closed."""
    if meta.start is None:  # no genesis and nothing stored: nothing is expected yet
        return _empty_index()
    lo, hi = max(start, meta.start), min(end, key.tf.floor(now))
    if lo >= hi:
        return _empty_index()
    spec = SeriesSpec(key, meta.profile, meta.calendar, meta.start)
    return grid_for([spec], lo, hi, overrides=overrides)


def _without(grid: pd.DatetimeIndex, ranges: Sequence[Range]) -> pd.DatetimeIndex:
    """`grid` less its bars that open inside `ranges` (merged, sorted)."""
    if not ranges or not len(grid):
        return grid
    starts = pd.DatetimeIndex([a for a, _ in ranges]).tz_convert("UTC").as_unit(_UNIT)
    ends = pd.DatetimeIndex([b for _, b in ranges]).tz_convert("UTC").as_unit(_UNIT)
    # The last range starting at or before each bar; the bar is inside it if it ends later.
    i = starts.searchsorted(grid, side="right") - 1
    inside = (i >= 0) & (grid < ends[np.maximum(i, 0)])
    return grid[~inside]


def _empty_index() -> pd.DatetimeIndex:
    return pd.DatetimeIndex([], tz="UTC", name="ts").as_unit(_UNIT)


# --- export ------------------------------------------------------------------------


class UnknownSeries(CandledError, ValueError):
    """A series the store has never seen (no row in `series`)."""


async def export(
    conn: asyncpg.Connection,
    series: SeriesArg,
    start: TimeArg,
    end: TimeArg | None,
    out: Path,
    *,
    how: How = "outer",
    empty: Empty = "nan",
    overrides: Overrides | None = None,
    progress: bool | None = None,
) -> int:
    """Write `load_candles(...)`'s frame to `out` (.csv or .parquet); return its rows.

    Read and written a window at a time (bounded memory) in one snapshot, with
    a progress bar in days (`progress=None`: only on a terminal). The file
    appears under its name only once complete. CSV: the index column `ts` in
    ISO 8601 UTC, then one header line per column level; read it back with
    `pd.read_csv(f, index_col=0, parse_dates=True)` (several series: add
    `header=[0, 1]`). Parquet keeps the index and the column levels:
    `pd.read_parquet(f)`.
    """
    keys, single = _series_arg(series)
    lo, hi = _window(start, end)
    _check_options(how, empty)
    sink_type = _sink_for(out)
    now = clock.now()
    tmp = out.with_name(f".{out.name}.tmp")
    rows = 0
    try:
        async with _snapshot(conn):
            meta = await _metadata(conn, keys)
            drop = how == "calendar" and empty == "drop"
            confirmed = await _confirmed_empty(conn, meta) if drop else {}
            # Nothing is stored or expected before the earliest series' start.
            starts = [m.start for m in meta.values() if m.start is not None]
            lo = min(max(lo, min(starts)), hi) if starts else hi
            step = _window_length(keys)
            days = math.ceil((hi - lo) / _DAY) if lo < hi else 0
            sink = await asyncio.to_thread(sink_type, tmp)
            try:
                with tqdm(
                    total=days,
                    unit="day",
                    desc="export",
                    disable=None if progress is None else not progress,
                ) as bar:
                    a = lo
                    while True:
                        b = hi if hi - a <= step else a + step
                        frame = await _frame(
                            conn, keys, meta, confirmed, single, a, b, how, overrides, now
                        )
                        await asyncio.to_thread(sink.write, frame)
                        rows += len(frame)
                        done = days if b >= hi else (b - lo) // _DAY
                        bar.update(done - bar.n)
                        bar.set_postfix(rows=rows, refresh=False)
                        if b >= hi:
                            break
                        a = b
            finally:
                await asyncio.to_thread(sink.close)
        await asyncio.to_thread(tmp.replace, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


async def export_command(
    dsn: str,
    state_dir: Path,
    series: Sequence[SeriesKey],
    since: timedelta | datetime,
    until: timedelta | datetime | None,
    out: Path,
    *,
    how: How = "outer",
    empty: Empty = "nan",
    overrides: Overrides | None = None,
) -> int:
    """`candled export`: exit 0 when written, 2 for bad arguments (an unknown
    series, an empty window, an unsupported file name), 1 when Parquet is asked
    for without pyarrow. `since`/`until`: a time, or a duration before now."""
    now = clock.now()
    start = now - since if isinstance(since, timedelta) else since
    end = now if until is None else now - until if isinstance(until, timedelta) else until
    try:
        _window(start, end)
        _check_options(how, empty)
        _sink_for(out)
    except ValueError as e:
        return _fail(e, 2)
    except ImportError as e:
        return _fail(e, 1)
    keys = list(dict.fromkeys(series))
    # One series: its five columns, as `read_candles` gives them for one series.
    chosen: SeriesArg = keys[0] if len(keys) == 1 else keys
    async with open_database(dsn, state_dir) as db, db.pool.acquire() as conn:
        try:
            rows = await export(
                conn, chosen, start, end, out, how=how, empty=empty, overrides=overrides
            )
        except UnknownSeries as e:
            return _fail(e, 2)
    print(f"{out}: {rows} rows, {len(keys)} series")
    return 0


def _fail(error: Exception, status: int) -> int:
    print(f"candled export: {error}", file=sys.stderr)
    return status


def _window_length(keys: Sequence[SeriesKey]) -> timedelta:
    """`_WINDOW_BARS` bars of the finest timeframe: a window's rows, at most, per series."""
    return timedelta(seconds=_WINDOW_BARS * min(k.tf.nominal_seconds for k in keys))


class _Sink:
    """Appends frames of one layout to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvSink(_Sink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = path.open("w", newline="", encoding="utf-8")
        self._header = True

    def write(self, frame: pd.DataFrame) -> None:
        # Every index value is UTC, so the offset is always +00:00 (as export-returns writes it).
        frame.to_csv(self._file, header=self._header, date_format="%Y-%m-%dT%H:%M:%S+00:00")
        self._header = False

    def close(self) -> None:
        self._file.close()


class _ParquetSink(_Sink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._writer: Any = None
        self._schema: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if (
            self._writer is None
        ):  # the first window decides the schema (and is written, empty or not)
            table = pa.Table.from_pandas(frame, preserve_index=True)
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.path, self._schema)
        elif frame.empty:
            return
        else:
            table = pa.Table.from_pandas(frame, preserve_index=True).cast(self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _sink_for(out: Path) -> type[_Sink]:
    """How to write `out`, or ValueError / ImportError saying why it cannot be."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{out}: unsupported output format; use .csv or .parquet")
    if not out.parent.is_dir():
        raise ValueError(f"{out}: no such directory: {out.parent}")
    if suffix == ".csv":
        return _CsvSink
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError(
            f"{out}: Parquet needs pyarrow, candled's `parquet` extra:"
            " pip install 'candled[parquet]' (or write .csv)"
        )
    return _ParquetSink


async def load_returns(
    conn: asyncpg.Connection | asyncpg.Pool,
    series: Sequence[SeriesKey],
    start: datetime,
    end: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> pd.DataFrame:
    """Aligned returns of `series` for bars opening in [start, end), read from the store.

    Profile, calendar and genesis come from the `series` table; a series
    without a genesis starts at its first stored bar (even one before `start`,
    so a window that begins in a hole reads 0.0 there, not NaN).
    """
    start, end = require_utc(start, "start"), require_utc(end, "end")
    if start >= end:
        raise ValueError(f"start {start.isoformat()} must be before end {end.isoformat()}")
    keys = list(dict.fromkeys(series))  # one column per series
    common_timeframe(keys)  # fail before any query
    found = await series_metadata(conn, keys)
    unknown = [str(k) for k in keys if k not in found]
    if unknown:
        raise ValueError(f"unknown series: {', '.join(unknown)}")
    specs = [SeriesSpec(k, found[k].profile, found[k].calendar, found[k].start) for k in keys]
    grid = grid_for(specs, start, end, overrides=overrides, forex_holidays=forex_holidays)
    closes: dict[SeriesKey, pd.Series] = {}
    for key in keys:
        # candle_data's primary key (series_id, ts) serves this range scan.
        bars = await conn.fetch(
            """SELECT ts, close FROM candle_data
               WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts""",
            found[key].id,
            start,
            end,
        )
        closes[key] = pd.Series(
            [b["close"] for b in bars],
            index=pd.DatetimeIndex([b["ts"] for b in bars], tz="UTC"),
            dtype=float,
        )
    return align_returns(closes, grid, {s.key: s.genesis for s in specs})
