"""Hand-checked market sessions: the simulator's calendar, independent of the daemon's.

The daemon audits with `candled.calendars` (pandas-market-calendars). If the
simulator decided which bars exist with that same code, a calendar bug would be
invisible end to end; so the simulator's sessions come from the literal table
below, and `tests/test_calendar_oracle.py` checks the daemon against it.

A bar exists iff [open, close) overlaps a session, the rule the daemon's
calendars state too. The table covers sessions dated 2023-2027: the tests use
2025-2027, and the venue simulator tests are dated 2024 with symbols listed
from 2023-01-01. Outside it `OutsideSessionTable` is raised rather than a
guessed session served: extend the table (with its source) instead.

Pure data and arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from candled.domain import DataProfile, Timeframe, require_utc

Interval = tuple[datetime, datetime]

FIRST_YEAR: Final = 2023
LAST_YEAR: Final = 2027

NEW_YORK: Final = ZoneInfo("America/New_York")
CHICAGO: Final = ZoneInfo("America/Chicago")

# Calendar names, as series and scenarios spell them.
CRYPTO: Final = "24/7"
XNYS: Final = "XNYS"
CME_EQUITY: Final = "CME_Equity"
FOREX: Final = "FOREX"

# ---------------------------------------------------------------------------
# NYSE (XNYS): regular session 09:30-16:00 New York, Monday to Friday.
#
# Source, every year: NYSE's published "Holidays and Trading Hours" schedule
# (nyse.com/markets/hours-calendars), written from the author's knowledge of it
# (no web access here), then cross-checked on 2026-12-01 against
# pandas-market-calendars 5.5 (`XNYS`): holidays and early closes agree for all
# five years, no disagreement. Observed-day rules visible below: a Saturday
# holiday is observed on Friday, a Sunday one on Monday, except New Year's Day
# on a Saturday (1 Jan 2028: no Friday holiday on 31 Dec 2027).
# ---------------------------------------------------------------------------
NYSE_OPEN: Final = time(9, 30)
NYSE_CLOSE: Final = time(16, 0)
NYSE_EARLY_CLOSE: Final = time(13, 0)

NYSE_HOLIDAYS: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (  # NYSE 2023 schedule
        date(2023, 1, 2),  # New Year's Day (1 Jan is a Sunday)
        date(2023, 1, 16),  # Martin Luther King Jr. Day
        date(2023, 2, 20),  # Washington's Birthday
        date(2023, 4, 7),  # Good Friday
        date(2023, 5, 29),  # Memorial Day
        date(2023, 6, 19),  # Juneteenth
        date(2023, 7, 4),  # Independence Day
        date(2023, 9, 4),  # Labor Day
        date(2023, 11, 23),  # Thanksgiving Day
        date(2023, 12, 25),  # Christmas Day
    ),
    2024: (  # NYSE 2024 schedule
        date(2024, 1, 1),  # New Year's Day
        date(2024, 1, 15),  # Martin Luther King Jr. Day
        date(2024, 2, 19),  # Washington's Birthday
        date(2024, 3, 29),  # Good Friday
        date(2024, 5, 27),  # Memorial Day
        date(2024, 6, 19),  # Juneteenth
        date(2024, 7, 4),  # Independence Day
        date(2024, 9, 2),  # Labor Day
        date(2024, 11, 28),  # Thanksgiving Day
        date(2024, 12, 25),  # Christmas Day
    ),
    2025: (  # NYSE 2025 schedule, plus its closure announced in January 2025
        date(2025, 1, 1),  # New Year's Day
        date(2025, 1, 9),  # National Day of Mourning for President Carter (announced)
        date(2025, 1, 20),  # Martin Luther King Jr. Day
        date(2025, 2, 17),  # Washington's Birthday
        date(2025, 4, 18),  # Good Friday
        date(2025, 5, 26),  # Memorial Day
        date(2025, 6, 19),  # Juneteenth
        date(2025, 7, 4),  # Independence Day
        date(2025, 9, 1),  # Labor Day
        date(2025, 11, 27),  # Thanksgiving Day
        date(2025, 12, 25),  # Christmas Day
    ),
    2026: (  # NYSE 2026 schedule
        date(2026, 1, 1),  # New Year's Day
        date(2026, 1, 19),  # Martin Luther King Jr. Day
        date(2026, 2, 16),  # Washington's Birthday
        date(2026, 4, 3),  # Good Friday
        date(2026, 5, 25),  # Memorial Day
        date(2026, 6, 19),  # Juneteenth
        date(2026, 7, 3),  # Independence Day, observed (4 Jul is a Saturday)
        date(2026, 9, 7),  # Labor Day
        date(2026, 11, 26),  # Thanksgiving Day
        date(2026, 12, 25),  # Christmas Day
    ),
    2027: (  # NYSE 2027 schedule
        date(2027, 1, 1),  # New Year's Day
        date(2027, 1, 18),  # Martin Luther King Jr. Day
        date(2027, 2, 15),  # Washington's Birthday
        date(2027, 3, 26),  # Good Friday
        date(2027, 5, 31),  # Memorial Day
        date(2027, 6, 18),  # Juneteenth, observed (19 Jun is a Saturday)
        date(2027, 7, 5),  # Independence Day, observed (4 Jul is a Sunday)
        date(2027, 9, 6),  # Labor Day
        date(2027, 11, 25),  # Thanksgiving Day
        date(2027, 12, 24),  # Christmas Day, observed (25 Dec is a Saturday)
    ),
}

# Early closes at 13:00 New York (same sources as the holidays).
NYSE_EARLY_CLOSES: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (
        date(2023, 7, 3),  # day before Independence Day
        date(2023, 11, 24),  # day after Thanksgiving
    ),
    2024: (
        date(2024, 7, 3),  # day before Independence Day
        date(2024, 11, 29),  # day after Thanksgiving
        date(2024, 12, 24),  # Christmas Eve
    ),
    2025: (
        date(2025, 7, 3),  # day before Independence Day
        date(2025, 11, 28),  # day after Thanksgiving
        date(2025, 12, 24),  # Christmas Eve
    ),
    2026: (  # 2 Jul is a full day: the holiday itself moved to Friday 3 Jul
        date(2026, 11, 27),  # day after Thanksgiving
        date(2026, 12, 24),  # Christmas Eve
    ),
    2027: (  # no Christmas Eve early close: 24 Dec is the observed holiday
        date(2027, 11, 26),  # day after Thanksgiving
    ),
}

# ---------------------------------------------------------------------------
# CME Globex equity (CME_Equity): the session dated D runs from 17:00 Chicago
# on the previous day to 16:00 on D, Monday to Friday, so Sunday 17:00 opens
# Monday's session and 16:00-17:00 is the daily halt; closed Saturday.
#
# Holidays: only what the author can state with confidence from CME Group's
# holiday trading notices (not fetched: no web access). Full closures on
# Christmas Day and New Year's Day; on the other US federal holidays equity
# futures halt at 12:00 Chicago and reopen at 17:00 for the next session.
# Cross-checked against pandas-market-calendars 5.5 (`CME_Equity`): it agrees
# on every date stated here. CME_UNSTATED lists the dates on which the table
# makes no claim (see there); the library's values for them are noted.
# ---------------------------------------------------------------------------
CME_OPEN: Final = time(17, 0)  # on the day before the session's date
CME_CLOSE: Final = time(16, 0)
CME_HOLIDAY_HALT: Final = time(12, 0)

CME_CLOSED: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (date(2023, 12, 25),),  # Christmas Day
    2024: (date(2024, 1, 1), date(2024, 12, 25)),  # New Year's Day, Christmas Day
    2025: (date(2025, 1, 1), date(2025, 12, 25)),  # New Year's Day, Christmas Day
    2026: (date(2026, 1, 1), date(2026, 12, 25)),  # New Year's Day, Christmas Day
    2027: (date(2027, 1, 1),),  # New Year's Day
}

# Sessions that halt at 12:00 Chicago: MLK, Presidents, Memorial, Juneteenth,
# Independence (observed), Labor and Thanksgiving Days, i.e. NYSE's holidays.
CME_HALTS: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (
        date(2023, 1, 16),
        date(2023, 2, 20),
        date(2023, 5, 29),
        date(2023, 6, 19),
        date(2023, 7, 4),
        date(2023, 9, 4),
        date(2023, 11, 23),
    ),
    2024: (
        date(2024, 1, 15),
        date(2024, 2, 19),
        date(2024, 5, 27),
        date(2024, 6, 19),
        date(2024, 7, 4),
        date(2024, 9, 2),
        date(2024, 11, 28),
    ),
    2025: (
        date(2025, 1, 20),
        date(2025, 2, 17),
        date(2025, 5, 26),
        date(2025, 6, 19),
        date(2025, 7, 4),
        date(2025, 9, 1),
        date(2025, 11, 27),
    ),
    2026: (
        date(2026, 1, 19),
        date(2026, 2, 16),
        date(2026, 5, 25),
        date(2026, 6, 19),
        date(2026, 7, 3),
        date(2026, 9, 7),
        date(2026, 11, 26),
    ),
    2027: (
        date(2027, 1, 18),
        date(2027, 2, 15),
        date(2027, 5, 31),
        date(2027, 6, 18),
        date(2027, 7, 5),
        date(2027, 9, 6),
        date(2027, 11, 25),
    ),
}

# Session dates on which the table makes no claim. The simulator trades the
# regular session on them (so whatever shorter session a calendar expects is a
# subset of what it serves: extra bars, never false holes), and the oracle test
# does not compare them. The author's recollection disagrees with, or cannot
# confirm, pandas-market-calendars 5.5 on each:
# - Good Friday: the library closes at 08:15 every year; CME has traded such an
#   abbreviated session when payrolls came out that day (2023, 2026?), and
#   otherwise closed.
# - Days before Independence Day, after Thanksgiving, Christmas Eve: the
#   library halts at 12:00; equity index futures used to close at 12:15.
# - 2023-01-02 (New Year observed), 2025-01-09 (Carter mourning day) and
#   2027-12-24 (Christmas observed): the library closes all day; unconfirmed.
CME_UNSTATED: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (
        date(2023, 1, 2),  # New Year's Day observed
        date(2023, 4, 7),  # Good Friday
        date(2023, 7, 3),  # day before Independence Day
        date(2023, 11, 24),  # day after Thanksgiving
    ),
    2024: (
        date(2024, 3, 29),  # Good Friday
        date(2024, 7, 3),  # day before Independence Day
        date(2024, 11, 29),  # day after Thanksgiving
        date(2024, 12, 24),  # Christmas Eve
    ),
    2025: (
        date(2025, 1, 9),  # National Day of Mourning
        date(2025, 4, 18),  # Good Friday
        date(2025, 7, 3),  # day before Independence Day
        date(2025, 11, 28),  # day after Thanksgiving
        date(2025, 12, 24),  # Christmas Eve
    ),
    2026: (
        date(2026, 4, 3),  # Good Friday
        date(2026, 11, 27),  # day after Thanksgiving
        date(2026, 12, 24),  # Christmas Eve
    ),
    2027: (
        date(2027, 3, 26),  # Good Friday
        date(2027, 11, 26),  # day after Thanksgiving
        date(2027, 12, 24),  # Christmas Day observed
    ),
}

# ---------------------------------------------------------------------------
# FX (profile FOREX): no exchange publishes it. The trading day D runs from
# 17:00 New York on D-1 to 17:00 on D (the daily roll), Monday to Friday: open
# from Sunday 17:00 to Friday 17:00 New York time, the UTC hours moving with
# New York's DST. FX_CLOSED drops whole trading days: 25 December and 1 January
# when they fall on a weekday, the convention candled's default FOREX holidays
# encode (no observed day for a weekend holiday).
# ---------------------------------------------------------------------------
FX_ROLL: Final = time(17, 0)

FX_CLOSED: Final[Mapping[int, tuple[date, ...]]] = {
    2023: (date(2023, 12, 25),),  # 1 Jan 2023 is a Sunday
    2024: (date(2024, 1, 1), date(2024, 12, 25)),
    2025: (date(2025, 1, 1), date(2025, 12, 25)),
    2026: (date(2026, 1, 1), date(2026, 12, 25)),
    2027: (date(2027, 1, 1),),  # 25 Dec 2027 is a Saturday
}


class OutsideSessionTable(ValueError):
    """A question about a date the hand-checked table does not cover."""


_DEFAULTS: Final[Mapping[DataProfile, str]] = {
    DataProfile.CRYPTO: CRYPTO,
    DataProfile.EQUITY: XNYS,
    DataProfile.FUTURES: CME_EQUITY,
    DataProfile.FOREX: FOREX,
}
# Spellings accepted per profile ("" is the default); NYSE is XNYS's other name.
_NAMES: Final[Mapping[DataProfile, Mapping[str, str]]] = {
    DataProfile.CRYPTO: {"": CRYPTO, CRYPTO: CRYPTO},
    DataProfile.EQUITY: {"": XNYS, XNYS: XNYS, "NYSE": XNYS},
    DataProfile.FUTURES: {"": CME_EQUITY, CME_EQUITY: CME_EQUITY},
    DataProfile.FOREX: {"": FOREX, FOREX: FOREX},
}
_TZ: Final[Mapping[str, ZoneInfo]] = {XNYS: NEW_YORK, CME_EQUITY: CHICAGO, FOREX: NEW_YORK}


def calendar_name(profile: DataProfile, calendar: str) -> str:
    """The table's name for a market (`calendar` "" picks the profile's), or ValueError."""
    name = _NAMES[profile].get(calendar)
    if name is None:
        known = ", ".join(k for k in _NAMES[profile] if k)
        raise ValueError(
            f"unknown calendar {calendar!r} for a {profile} symbol: the simulator's"
            f" session table knows {known} (leave it empty for {_DEFAULTS[profile]})"
        )
    return name


def covered(name: str) -> Interval:
    """The instants whose state the table decides for calendar `name`.

    Every session dated D lies within [17:00 on D-1, 17:00 on D] local time, so
    sessions dated outside the table's years cannot reach inside this span.
    """
    tz = _TZ[name]
    return (
        _at(date(FIRST_YEAR - 1, 12, 31), time(17, 0), tz),
        _at(date(LAST_YEAR, 12, 31), time(17, 0), tz),
    )


def sessions(name: str, start: datetime, end: datetime) -> list[Interval]:
    """Open intervals within [start, end): sorted, merged, clipped, UTC.

    OutsideSessionTable when [start, end) reaches outside `covered(name)`.
    """
    start, end = require_utc(start, "start"), require_utc(end, "end")
    if start >= end:
        return []
    if name == CRYPTO:
        return [(start, end)]
    _require_covered(name, start, end)
    opens, closes = _sessions(name)
    found: list[Interval] = []
    i = bisect_right(closes, start)  # first session still open after `start`
    while i < len(opens) and opens[i] < end:
        found.append((max(opens[i], start), min(closes[i], end)))
        i += 1
    return found


def bar_ranges(name: str, tf: Timeframe, start: datetime, end: datetime) -> list[Interval]:
    """Bar-aligned merged ranges holding every bar with start <= open < end that
    overlaps a session."""
    # Bars opening in [start, end) cover exactly [ceil(start), ceil(end)).
    found = sessions(name, tf.ceil(start), tf.ceil(end))
    return _merge((tf.floor(a), tf.ceil(b)) for a, b in found)


def has_bar(name: str, tf: Timeframe, open_ts: datetime) -> bool:
    """Whether the bar opening at `open_ts` overlaps a session."""
    if name == CRYPTO:
        return True
    open_ts = require_utc(open_ts)
    close_ts = tf.close_time(open_ts)
    opens, closes = _sessions(name)
    i = bisect_right(closes, open_ts)  # first session closing after the bar opens
    if i < len(opens) and opens[i] < close_ts:
        return True
    # No session overlaps within the table; a bar reaching outside it is unknown.
    _require_covered(name, open_ts, close_ts)
    return False


def session_window(name: str, day: date) -> Interval:
    """The span in which a session dated `day` can lie: 17:00 on day-1 to 17:00 on day."""
    tz = _TZ[name]
    return _at(day - timedelta(days=1), time(17, 0), tz), _at(day, time(17, 0), tz)


def _require_covered(name: str, start: datetime, end: datetime) -> None:
    first, last = covered(name)
    if start < first or end > last:
        raise OutsideSessionTable(
            f"{name} sessions for {start.isoformat()}..{end.isoformat()}: the simulator's"
            f" hand-checked table covers {first.isoformat()}..{last.isoformat()} (sessions"
            f" dated {FIRST_YEAR}-{LAST_YEAR}); add the year's dates to sim/sessions.py"
        )


@functools.cache
def _sessions(name: str) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    """Every merged session of the table's years, as parallel (opens, closes)."""
    merged = _merge(_day_sessions(name))
    return tuple(a for a, _ in merged), tuple(b for _, b in merged)


def _day_sessions(name: str) -> list[Interval]:
    found: list[Interval] = []
    if name == XNYS:
        closed, early = _flat(NYSE_HOLIDAYS), _flat(NYSE_EARLY_CLOSES)
        for day in _weekdays():
            if day not in closed:
                close = NYSE_EARLY_CLOSE if day in early else NYSE_CLOSE
                found.append((_at(day, NYSE_OPEN, NEW_YORK), _at(day, close, NEW_YORK)))
    elif name == CME_EQUITY:
        closed, halts = _flat(CME_CLOSED), _flat(CME_HALTS)
        for day in _weekdays():
            if day not in closed:
                close = CME_HOLIDAY_HALT if day in halts else CME_CLOSE
                opens = _at(day - timedelta(days=1), CME_OPEN, CHICAGO)
                found.append((opens, _at(day, close, CHICAGO)))
    elif name == FOREX:
        closed = _flat(FX_CLOSED)
        for day in _weekdays():
            if day not in closed:
                opens = _at(day - timedelta(days=1), FX_ROLL, NEW_YORK)
                found.append((opens, _at(day, FX_ROLL, NEW_YORK)))
    else:
        raise ValueError(f"no session table for calendar {name!r}")
    return found


def _weekdays() -> list[date]:
    """Monday to Friday of the table's years: the only days with sessions."""
    day, stop = date(FIRST_YEAR, 1, 1), date(LAST_YEAR + 1, 1, 1)
    days: list[date] = []
    while day < stop:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def _flat(table: Mapping[int, tuple[date, ...]]) -> frozenset[date]:
    return frozenset(d for days in table.values() for d in days)


def _at(day: date, local: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, local, tzinfo=tz).astimezone(UTC)


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted union of half-open intervals; touching ones join."""
    merged: list[Interval] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged
