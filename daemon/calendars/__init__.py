"""Session calendars: which bars a series should have, as merged UTC ranges.

A market is described by its sessions, the sorted, merged, half-open UTC
intervals in which it trades. A bar is expected iff its interval
[open, open + tf) overlaps a session, so an intraday bar that starts before an
early close is expected, and a daily, weekly or monthly bar is expected for
every period containing some trading. Ranges, not bar lists, keep a 30-day
`1m` audit of 100 series cheap.

Profiles: CRYPTO trades always. EQUITY and FUTURES use pandas-market-calendars
(defaults `XNYS` and `CME_Equity`; CME sessions run 17:00 Chicago on the prior
day to 16:00, so the daily 16:00-17:00 halt and the Sunday 17:00 open are the
gaps between sessions). FOREX uses the rule in `candled.calendars.forex`. An
`Overrides` file (format in `candled.calendars.overrides`) corrects either.

Schedules are fetched a decade at a time and cached per calendar, decade,
override and holiday set; a query is then a bisection. Pure apart from
`load_overrides`, which reads a file; nothing here reads a clock.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo

from candled.calendars import forex, library
from candled.calendars.days import TradingDay
from candled.calendars.forex import FOREX_HOLIDAYS
from candled.calendars.library import FOREX
from candled.calendars.overrides import CalendarOverride, Overrides, load_overrides
from candled.domain import DataProfile, Timeframe, require_utc
from candled.domain.ranges import Range, count_bars, merge_ranges

__all__ = [
    "FOREX_HOLIDAYS",
    "CalendarOverride",
    "Overrides",
    "count_expected",
    "expected_ranges",
    "is_open",
    "last_expected_bar",
    "load_overrides",
    "sessions",
    "validate_calendar",
]

_DEFAULT_CALENDAR = {
    DataProfile.CRYPTO: "24/7",
    DataProfile.EQUITY: "XNYS",
    DataProfile.FUTURES: "CME_Equity",
    DataProfile.FOREX: FOREX,
}
_BUILT_IN = (DataProfile.CRYPTO, DataProfile.FOREX)
# A session dated D lies within D +- 2 days in UTC (CME opens the evening before).
_SPILL = timedelta(days=3)
_DECADE = 10


def validate_calendar(profile: DataProfile, calendar: str) -> str:
    """The calendar name a series uses ("" picks the profile's default), or ValueError."""
    default = _DEFAULT_CALENDAR[profile]
    name = calendar or default
    if profile in _BUILT_IN:
        if name != default:
            raise ValueError(
                f"calendar {calendar!r}: {profile} series use the built-in {default} rule;"
                " leave calendar empty"
            )
    elif name == FOREX:
        raise ValueError(f"calendar {name!r} for a {profile} series: use profile FOREX")
    elif not library.is_library_calendar(name):
        raise ValueError(
            f"unknown calendar {name!r} for a {profile} series; pandas-market-calendars"
            " names such as XNYS, NYSE, CME_Equity (see mcal.get_calendar_names())"
        )
    return name


def sessions(
    profile: DataProfile,
    calendar: str,
    start: datetime,
    end: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> list[Range]:
    """Open intervals within [start, end): sorted, merged, clipped, UTC."""
    name = validate_calendar(profile, calendar)
    start, end = require_utc(start, "start"), require_utc(end, "end")
    if start >= end:
        return []
    if profile == DataProfile.CRYPTO:
        return [(start, end)]
    override = overrides.get(name) if overrides is not None else None
    holidays = frozenset(forex_holidays) if name == FOREX else frozenset()
    found: list[Range] = []
    for decade in range((start - _SPILL).year // _DECADE, (end + _SPILL).year // _DECADE + 1):
        opens, closes = _decade_sessions(name, decade, override, holidays)
        i = bisect_right(closes, start)  # first session still open after `start`
        while i < len(opens) and opens[i] < end:
            found.append((max(opens[i], start), min(closes[i], end)))
            i += 1
    return merge_ranges(found)


def expected_ranges(
    profile: DataProfile,
    calendar: str,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> list[Range]:
    """Bar-aligned, merged ranges holding every expected bar with start <= open < end."""
    # Bars opening in [start, end) cover exactly [ceil(start), ceil(end)).
    first, stop = tf.ceil(start), tf.ceil(end)
    found = sessions(
        profile, calendar, first, stop, overrides=overrides, forex_holidays=forex_holidays
    )
    return merge_ranges((tf.floor(a), tf.ceil(b)) for a, b in found)


def count_expected(
    profile: DataProfile,
    calendar: str,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> int:
    """Number of expected bars with start <= open < end."""
    ranges = expected_ranges(
        profile, calendar, tf, start, end, overrides=overrides, forex_holidays=forex_holidays
    )
    return count_bars(ranges, tf)


def is_open(
    profile: DataProfile,
    calendar: str,
    ts: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> bool:
    """Whether the market trades at instant `ts`."""
    ts = require_utc(ts, "ts")
    tick = ts + timedelta(microseconds=1)
    return bool(
        sessions(profile, calendar, ts, tick, overrides=overrides, forex_holidays=forex_holidays)
    )


def last_expected_bar(
    profile: DataProfile,
    calendar: str,
    tf: Timeframe,
    now: datetime,
    *,
    overrides: Overrides | None = None,
    forex_holidays: Collection[tuple[int, int]] = FOREX_HOLIDAYS,
) -> datetime | None:
    """Open time of the newest expected bar that has closed by `now`.

    None when the calendar has no session in the last ~5 years. A series is
    stale only when its newest bar is older than this, so an equity series
    on Saturday compares against Friday's last bar.
    """
    stop = tf.floor(now)  # bars opening before this have closed by `now`
    span = max(timedelta(days=8), timedelta(seconds=4 * tf.nominal_seconds))
    for _ in range(5):  # widen 8 d, 32 d, ... ~5.6 y: holidays rarely need a second pass
        found = expected_ranges(
            profile,
            calendar,
            tf,
            stop - span,
            stop,
            overrides=overrides,
            forex_holidays=forex_holidays,
        )
        if found:
            return tf.add(found[-1][1], -1)
        span *= 4
    return None


@functools.lru_cache(maxsize=256)
def _decade_sessions(
    name: str,
    decade: int,
    override: CalendarOverride | None,
    holidays: frozenset[tuple[int, int]],
) -> tuple[Sequence[datetime], Sequence[datetime]]:
    """Merged sessions dated in one decade, as parallel (opens, closes) for bisection."""
    years = range(decade * _DECADE, (decade + 1) * _DECADE)
    tz: tzinfo
    if name == FOREX:
        days = forex.forex_days(years, holidays)
        tz, regular_open = forex.NEW_YORK, forex.regular_open
    else:
        days = library.library_days(name, years)
        tz, regular_open = library.calendar_tz(name), functools.partial(library.regular_open, name)
    if override is not None:
        days = _apply_override(days, override, tz, regular_open, years)
    merged = merge_ranges(r for d in days for r in d.intervals())
    return tuple(a for a, _ in merged), tuple(b for _, b in merged)


def _apply_override(
    days: list[TradingDay],
    override: CalendarOverride,
    tz: tzinfo,
    regular_open: Callable[[date], datetime],
    years: range,
) -> list[TradingDay]:
    """`days` corrected by `override`, using only its dates within `years`.

    An early close on a date without a session creates one from the regular
    open; restricting to the caller's block makes each block add it once.
    """
    by_day = {d.day: d for d in days if d.day not in override.closed}
    for day, local_close in override.early_closes:
        if day.year not in years:
            continue
        close = datetime.combine(day, local_close, tzinfo=tz).astimezone(UTC)
        existing = by_day.get(day)
        if existing is None:
            by_day[day] = TradingDay(day, regular_open(day), close)
        else:
            by_day[day] = replace(existing, close=close)
    return sorted(by_day.values(), key=lambda d: d.day)
