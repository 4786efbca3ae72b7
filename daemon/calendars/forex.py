"""The FOREX 24/5 rule, written here because the library's FOREX calendar opens
on Saturday evening.

The FX trading day D runs from 17:00 America/New_York on D-1 to 17:00 on D (the
market's daily roll). Trading days are Monday to Friday, so the market is open
from Sunday 17:00 to Friday 17:00 New York time, and the UTC hours move with
New York's DST. A holiday (month, day) removes that trading day: with the
default 25 December and 1 January, the market closes at 17:00 on 24 December
(31 December) and reopens at 17:00 on the holiday itself, when the next
trading day begins (as the interbank market does). A holiday on a weekend has
no effect; there is no observed-day shift.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from candled.calendars.days import TradingDay

NEW_YORK = ZoneInfo("America/New_York")
ROLL = time(17, 0)
FOREX_HOLIDAYS: frozenset[tuple[int, int]] = frozenset({(12, 25), (1, 1)})


def regular_open(day: date) -> datetime:
    """Open of trading day `day`: 17:00 New York the evening before."""
    return datetime.combine(day - timedelta(days=1), ROLL, tzinfo=NEW_YORK).astimezone(UTC)


def forex_days(years: range, holidays: frozenset[tuple[int, int]]) -> list[TradingDay]:
    """The FX trading days whose date lies in `years`."""
    day, stop = date(years.start, 1, 1), date(years.stop, 1, 1)
    days: list[TradingDay] = []
    while day < stop:
        if day.weekday() < 5 and (day.month, day.day) not in holidays:
            close = datetime.combine(day, ROLL, tzinfo=NEW_YORK).astimezone(UTC)
            days.append(TradingDay(day, regular_open(day), close))
        day += timedelta(days=1)
    return days
