"""Neutral alignment: simple returns of several series on one bar grid.

An explicit, opt-in export (README, "Neutral-aligned returns"): nothing here
writes to the store. The grid is the union of the series' expected bar open
times, so a crypto series and an equity series share one index and the equity
column reads 0.0 over the weekend. Per series and grid bar `t`:

- bar present: `close_t / close_prev - 1`, where `close_prev` is the series'
  latest present close at an earlier grid bar. Across a hole the return spans
  the whole gap, so compounding a column gives the series' total return.
- bar missing (still, after repair), at or after the series' start: 0.0.
- before the series' start: NaN. The start is its genesis, or the first stored
  bar when that is earlier or the genesis is unknown: data the store holds is
  never hidden behind a stale genesis.
- the first present bar: NaN, because its previous close is not in the
  requested window. We do not reach back before `start` for it, so a window's
  returns depend only on the closes inside that window.

Closes at times that are not on the grid (a venue's bar on an exchange
holiday) are ignored; the next grid bar's return spans them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from candled.calendars import FOREX_HOLIDAYS, Overrides, expected_ranges
from candled.domain import DataProfile, SeriesKey, Timeframe, require_utc
from candled.domain.ranges import Range, merge_ranges

__all__ = ["SeriesSpec", "align_returns", "grid_for", "write_frame"]

# Store precision; an empty DatetimeIndex would otherwise default to seconds.
_UNIT = "us"


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """What the grid and the alignment need to know about one series."""

    key: SeriesKey
    profile: DataProfile
    calendar: str = ""  # "" = the profile's default calendar
    genesis: datetime | None = None  # or any earlier known start of the series


def align_returns(
    closes: Mapping[SeriesKey, pd.Series],
    grid: pd.DatetimeIndex,
    genesis: Mapping[SeriesKey, datetime | None],
) -> pd.DataFrame:
    """Returns on `grid` (UTC), one float column per series named `VENUE:SYMBOL:TF`.

    `closes` maps each series to its close prices indexed by tz-aware bar open
    times; `genesis` gives each series' first bar (None or absent: unknown).
    Semantics in the module docstring.
    """
    index = _utc_index(grid, "grid")
    if not (index.is_unique and index.is_monotonic_increasing):
        raise ValueError("grid must be sorted and free of duplicates")
    columns: dict[str, npt.NDArray[np.float64]] = {}
    for key, series in closes.items():
        present = series.dropna()
        present.index = _utc_index(present.index, f"closes of {key}")
        if not present.index.is_unique:
            raise ValueError(f"closes of {key} have duplicate timestamps")
        start = _series_start(present, genesis.get(key))
        on_grid = present.reindex(index)  # off-grid closes drop out here
        # ffill().shift() is the latest present close at an earlier grid bar;
        # copy, as copy-on-write pandas hands out read-only arrays.
        returns = (on_grid / on_grid.ffill().shift(1) - 1.0).to_numpy(dtype=float, copy=True)
        missing = on_grid.isna().to_numpy()
        returns[missing] = 0.0
        if start is None:  # no genesis and no closes: nothing is known
            returns[:] = np.nan
        else:
            returns[index < start] = np.nan
        columns[str(key)] = returns
    frame = pd.DataFrame(columns, index=index, dtype=float)
    frame.index.name = "ts"
    return frame


def grid_for(
    specs: Sequence[SeriesSpec],
    start: datetime,
    end: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> pd.DatetimeIndex:
    """Union of the series' expected bar open times in [start, end), UTC.

    All series must share one timeframe: returns of different bar lengths do
    not line up row by row.
    """
    tf = common_timeframe([s.key for s in specs])
    ranges: list[Range] = []
    for spec in specs:
        ranges += expected_ranges(
            spec.profile,
            spec.calendar,
            tf,
            start,
            end,
            overrides=overrides,
            forex_holidays=forex_holidays,
        )
    # The ranges are aligned to the one timeframe, so merging them unions their bars.
    grid = pd.DatetimeIndex([], tz="UTC").as_unit(_UNIT)
    grid = grid.append([_bars(tf, a, b) for a, b in merge_ranges(ranges)])
    grid.name = "ts"
    return grid


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to `.csv` (index column `ts`, ISO-8601 UTC) or `.parquet`.

    Written to a temporary file beside `path` and renamed, so an interrupted
    export never leaves a truncated file under the final name.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported output format; use .csv or .parquet")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ImportError(
            f"{path}: writing Parquet needs pyarrow, which is not installed:"
            " pip install pyarrow (or write .csv)"
        )
    out = frame.copy()
    out.index = _utc_index(frame.index, "frame index")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if suffix == ".csv":
            out.index = pd.Index([ts.isoformat() for ts in out.index], name="ts")
            out.to_csv(tmp, index_label="ts")
        else:
            out.index.name = "ts"
            out.to_parquet(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def common_timeframe(keys: Sequence[SeriesKey]) -> Timeframe:
    """The one timeframe `keys` share (series are aligned on one grid)."""
    if not keys:
        raise ValueError("no series given")
    timeframes = {k.timeframe for k in keys}
    if len(timeframes) > 1:
        listed = ", ".join(str(k) for k in keys)
        raise ValueError(f"series must share one timeframe to be aligned; got {listed}")
    return keys[0].tf


def _bars(tf: Timeframe, start: datetime, end: datetime) -> pd.DatetimeIndex:
    """Bar open times in an aligned range [start, end)."""
    if tf.is_monthly:  # no fixed length: step by calendar months
        return pd.DatetimeIndex(list(tf.bars(start, end)), tz="UTC").as_unit(_UNIT)
    step = pd.Timedelta(timedelta(seconds=tf.seconds))
    return pd.date_range(start, end, freq=step, inclusive="left").as_unit(_UNIT)


def _series_start(present: pd.Series, genesis: datetime | None) -> pd.Timestamp | None:
    """Where a series begins: the earlier of its genesis and its first close."""
    candidates = [] if genesis is None else [pd.Timestamp(require_utc(genesis, "genesis"))]
    if len(present):
        candidates.append(present.index.min())
    return min(candidates) if candidates else None


def _utc_index(index: pd.Index, what: str) -> pd.DatetimeIndex:
    if len(index) == 0 and not isinstance(index, pd.DatetimeIndex):
        return pd.DatetimeIndex([], tz="UTC").as_unit(_UNIT)  # e.g. pd.Series([])
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError(f"{what} must be a timezone-aware DatetimeIndex")
    return index.tz_convert("UTC")
