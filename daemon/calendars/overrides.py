"""Local calendar overrides, which take precedence over pandas-market-calendars.

The library has had holiday bugs (its issues 390, 400, 486), so an operator can
correct it without waiting for a release. File format (TOML):

    # One table per calendar, named exactly as in the series config ("XNYS",
    # "CME_Equity", ...; "FOREX" for the built-in FOREX rule). "NYSE" and "XNYS"
    # are different keys: use the name your series use.
    [XNYS]
    # Session (trading-day) dates with no session at all.
    closed = [2025-01-09, "2018-12-05"]

    # Session date -> close time, wall clock in the calendar's own timezone
    # ("HH:MM" or a TOML local time). A date on which the library has no session
    # gets one, from the calendar's regular open to this close: that is how a
    # day the library wrongly closes is reopened.
    [XNYS.early_closes]
    2025-11-28 = "13:00"

A session date is the exchange's trading day: for CME calendars the session
dated D opens at 17:00 Chicago on D-1; for FOREX the trading day D runs from
17:00 New York on D-1 to 17:00 on D. Dates are TOML dates or "YYYY-MM-DD"
strings. Unknown calendars, unknown keys, bad values and a date that is both
closed and an early close are errors that name the offending key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Any

from candled.calendars.library import FOREX, is_library_calendar
from candled.files import read_bounded

_KEYS = ("closed", "early_closes")


@dataclass(frozen=True, slots=True)
class CalendarOverride:
    """Corrections for one calendar. Hashable: schedules are cached per override."""

    closed: frozenset[date] = frozenset()
    early_closes: frozenset[tuple[date, time]] = frozenset()


@dataclass(frozen=True, slots=True)
class Overrides:
    """Corrections per calendar name (as written in the series config)."""

    calendars: Mapping[str, CalendarOverride] = field(default_factory=dict)

    def get(self, calendar: str) -> CalendarOverride | None:
        """The corrections for `calendar`, or None when the file has none for it."""
        return self.calendars.get(calendar)


# A year of corrections for every calendar is a few KiB: past this, the path
# names something else (a log, /dev/zero), which would be read without end.
MAX_FILE_BYTES = 1 << 20


def load_overrides(path: str | Path) -> Overrides:
    """Read and validate an override file (the only I/O of the calendars).

    Every problem with the file is an `OSError` (cannot open it) or a
    `ValueError` whose message says where, never another exception: the file
    is read through the config, whose loader names the key that points here.
    """
    data = read_bounded(path, MAX_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    try:
        parsed = tomllib.loads(text)
    except RecursionError:
        # tomllib recurses per nested array or inline table.
        raise ValueError(f"{path}: invalid TOML: nested too deeply") from None
    except ValueError as e:
        # TOMLDecodeError, and ValueError for an integer of over 4300 digits.
        raise ValueError(f"{path}: invalid TOML: {_shorten(str(e))}") from None
    return parse_overrides(parsed, source=str(path))


def _key(name: str) -> str:
    """A TOML key as a message shows it: quoted where it is not plain text."""
    return name if name.isprintable() and len(name) <= 64 else _shorten(repr(name), 64)


def _shorten(text: str, limit: int = 200) -> str:
    """A message quoting a value stays one readable line, however long the value."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_overrides(data: Mapping[str, Any], *, source: str = "overrides") -> Overrides:
    """Validate already-parsed TOML (e.g. a table embedded in another file)."""
    calendars: dict[str, CalendarOverride] = {}
    for name, table in data.items():
        where = f"{source}: [{_key(name)}]"
        if name != FOREX and not is_library_calendar(name):
            raise ValueError(f"{where}: unknown calendar {_shorten(repr(name))}")
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table")
        calendars[name] = _parse_calendar(table, where)
    return Overrides(calendars)


def _parse_calendar(table: Mapping[str, Any], where: str) -> CalendarOverride:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(
            f"{where}.{_key(unknown[0])}: unknown key; expected one of {', '.join(_KEYS)}"
        )
    closed_list = table.get("closed", [])
    if not isinstance(closed_list, list):
        raise ValueError(f"{where}.closed: expected a list of dates")
    closed = frozenset(_date(v, f"{where}.closed[{i}]") for i, v in enumerate(closed_list))
    early_table = table.get("early_closes", {})
    if not isinstance(early_table, dict):
        raise ValueError(f"{where}.early_closes: expected a table of date = time")
    early: dict[date, time] = {}
    for key, value in early_table.items():
        key_where = f"{where}.early_closes.{_key(key)}"
        day = _date(key, key_where)
        if day in closed:
            raise ValueError(f"{key_where}: date is also listed in closed")
        early[day] = _time(value, key_where)
    return CalendarOverride(closed, frozenset(early.items()))


def _date(value: object, where: str) -> date:
    # tomllib gives datetimes for date-times; those are not session dates.
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: expected a date YYYY-MM-DD, got {_shorten(repr(value))}")


def _time(value: object, where: str) -> time:
    if isinstance(value, time):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = time.fromisoformat(value)
        except ValueError:
            parsed = None
    else:
        parsed = None
    if parsed is None or parsed.tzinfo is not None:
        raise ValueError(f"{where}: expected a local time HH:MM, got {_shorten(repr(value))}")
    return parsed
