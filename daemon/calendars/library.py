"""pandas-market-calendars, reduced to trading days in UTC.

Measured with 5.5: the first `schedule()` of a calendar costs 40-150 ms, then a
2-day range still costs 2-6 ms and a whole decade only 6-16 ms. So callers
fetch decades and cache them rather than asking per audit.
"""

from __future__ import annotations

import functools
import warnings
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import pandas as pd
import pandas_market_calendars as mcal

from candled.calendars.days import TradingDay

# Our built-in FOREX rule owns this name; the library's FOREX calendar is wrong for FX.
FOREX = "FOREX"


@functools.cache
def _calendar(name: str) -> Any:
    return mcal.get_calendar(name)


def is_library_calendar(name: str) -> bool:
    """Whether pandas-market-calendars knows `name`; config and overrides reject the rest."""
    return name in _library_names()


@functools.cache
def _library_names() -> frozenset[str]:
    return frozenset(mcal.get_calendar_names())


def calendar_tz(name: str) -> tzinfo:
    """The exchange's own timezone, in which override close times are written."""
    tz: tzinfo = _calendar(name).tz
    return tz


def regular_open(name: str, day: date) -> datetime:
    """The calendar's current regular open for the session dated `day`, in UTC."""
    cal = _calendar(name)
    local_day = day + timedelta(days=cal.open_offset)
    return datetime.combine(local_day, cal.open_time, tzinfo=cal.tz).astimezone(UTC)


def library_days(name: str, years: range) -> list[TradingDay]:
    """The library's sessions dated in `years`, breaks included."""
    with warnings.catch_warnings():
        # The library (5.5) calls pandas APIs that pandas 3 deprecates: noise, not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        schedule = _calendar(name).schedule(f"{years.start}-01-01", f"{years.stop - 1}-12-31")
    opens, closes = _column(schedule, "market_open"), _column(schedule, "market_close")
    b0, b1 = _column(schedule, "break_start"), _column(schedule, "break_end")
    days: list[TradingDay] = []
    for i, label in enumerate(schedule.index):
        o, c = opens[i], closes[i]
        if o is not None and c is not None:
            days.append(TradingDay(label.date(), o, c, b0[i], b1[i]))
    return days


def _column(schedule: pd.DataFrame, column: str) -> list[datetime | None]:
    if column not in schedule.columns:
        return [None] * len(schedule)
    return [None if pd.isna(v) else v.to_pydatetime().astimezone(UTC) for v in schedule[column]]
