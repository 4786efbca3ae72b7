"""The daemon's calendars against an independent oracle: the simulator's
hand-checked session table (sim/sessions.py), 2025-2027.

The simulator no longer shares the daemon's calendar code, so a wrong holiday
in `candled.calendars` (or pandas-market-calendars) fails here, naming the first
bar on which the two disagree.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from candled import calendars
from candled.domain import DataProfile, Timeframe
from candled_sim import sessions
from candled_sim.sessions import Interval, OutsideSessionTable

START = datetime(2025, 1, 1, tzinfo=UTC)
# The table's last covered instant is 31 Dec 2027 17:00 New York (22:00 UTC):
# stop before it so that no compared bar reaches past the table.
END = datetime(2027, 12, 31, 21, tzinfo=UTC)
YEARS = range(2025, 2028)

# (profile, calendar as a series spells it, table name, local zone for messages)
MARKETS = [
    (DataProfile.EQUITY, "XNYS", sessions.XNYS, sessions.NEW_YORK),
    (DataProfile.FOREX, "", sessions.FOREX, sessions.NEW_YORK),
    (DataProfile.FUTURES, "CME_Equity", sessions.CME_EQUITY, sessions.CHICAGO),
]
TIMEFRAMES = ["1m", "15m", "1h", "1d"]
CASES = [
    pytest.param(profile, calendar, name, tz, tf, id=f"{name}-{tf}")
    for profile, calendar, name, tz in MARKETS
    for tf in TIMEFRAMES
]


def unstated(name: str, tf: Timeframe) -> list[Interval]:
    """Bars the table makes no claim about (CME dates it cannot confirm)."""
    if name != sessions.CME_EQUITY:
        return []
    windows = (
        sessions.session_window(name, day)
        for year in YEARS
        for day in sessions.CME_UNSTATED.get(year, ())
    )
    return merge((tf.floor(a), tf.ceil(b)) for a, b in windows)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def subtract(ranges: list[Interval], holes: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in ranges:
        pieces = [(a, b)]
        for h0, h1 in holes:
            pieces = [
                part
                for p0, p1 in pieces
                for part in ((p0, min(p1, h0)), (max(p0, h1), p1))
                if part[0] < part[1]
            ]
        out.extend(pieces)
    return out


def contains(ranges: list[Interval], ts: datetime) -> bool:
    i = bisect_right([a for a, _ in ranges], ts) - 1
    return i >= 0 and ts < ranges[i][1]


def first_difference(table: list[Interval], daemon: list[Interval]) -> datetime | None:
    """The first bar open time that one range list holds and the other does not."""
    # Membership only changes at range boundaries, so the first difference starts at one.
    for ts in sorted({t for r in (*table, *daemon) for t in r}):
        if contains(table, ts) != contains(daemon, ts):
            return ts
    return None


def describe(ts: datetime, tz: ZoneInfo) -> str:
    local = ts.astimezone(tz)
    return f"{ts:%Y-%m-%d %H:%M} UTC ({local:%a %Y-%m-%d %H:%M} {local.tzname()})"


def nearby(ranges: list[Interval], ts: datetime) -> str:
    close = [r for r in ranges if r[1] >= ts - timedelta(days=2) and r[0] <= ts + timedelta(days=2)]
    return ", ".join(f"[{a:%m-%d %H:%M}, {b:%m-%d %H:%M})" for a, b in close) or "none"


@pytest.mark.parametrize(("profile", "calendar", "name", "tz", "timeframe"), CASES)
def test_expected_ranges_match_the_table(
    profile: DataProfile, calendar: str, name: str, tz: ZoneInfo, timeframe: str
) -> None:
    tf = Timeframe.parse(timeframe)
    skip = unstated(name, tf)
    end = tf.floor(END)  # a bar opening before it ends before the table does
    table = subtract(sessions.bar_ranges(name, tf, START, end), skip)
    daemon = subtract(calendars.expected_ranges(profile, calendar, tf, START, end), skip)
    ts = first_difference(table, daemon)
    if ts is not None:
        verdict = "expects" if contains(daemon, ts) else "does not expect"
        pytest.fail(
            f"{name} {tf}: first disagreement at the bar opening {describe(ts, tz)}:"
            f" daemon.calendars {verdict} it, the hand-checked table says the opposite.\n"
            f"  table bars (UTC) near it:  {nearby(table, ts)}\n"
            f"  daemon bars (UTC) near it: {nearby(daemon, ts)}",
            pytrace=False,
        )


def samples(name: str) -> Iterator[datetime]:
    """Instants around every session boundary in the compared years."""
    for a, b in sessions.sessions(name, START + timedelta(days=10), END):
        for edge in (a, b):
            for minutes in (-61, -1, 0, 1, 59):
                yield edge + timedelta(minutes=minutes)


def oracle_last_bar(name: str, tf: Timeframe, now: datetime) -> datetime:
    """Open time of the newest bar closed by `now` that overlaps a table session."""
    stop = tf.floor(now)
    found = sessions.sessions(name, stop - timedelta(days=10), stop)  # clipped at `stop`
    return tf.floor(found[-1][1] - timedelta(microseconds=1))


@pytest.mark.parametrize(("profile", "calendar", "name", "tz", "timeframe"), CASES)
def test_last_expected_bar_matches_the_table(
    profile: DataProfile, calendar: str, name: str, tz: ZoneInfo, timeframe: str
) -> None:
    tf = Timeframe.parse(timeframe)
    skip = unstated(name, tf)
    for now in samples(name):
        want = oracle_last_bar(name, tf, now)
        got = calendars.last_expected_bar(profile, calendar, tf, now)
        if got == want:
            continue
        earliest = min(want, got) if got is not None else want
        if any(a < now and earliest < b for a, b in skip):
            continue  # the answer depends on a date the table makes no claim about
        pytest.fail(
            f"{name} {tf}: at now = {describe(now, tz)} the table's last closed bar opens at"
            f" {describe(want, tz)}, daemon.calendars.last_expected_bar says"
            f" {describe(got, tz) if got else None}",
            pytrace=False,
        )


# Hand-checked anchors: UTC instants worked out by hand, so that a time-zone
# mistake in the table module itself cannot hide behind zoneinfo.
ANCHORS = [
    # NYSE, New York on EST (UTC-5): 09:30 = 14:30 UTC; a Friday early close at 13:00.
    (sessions.XNYS, "2026-11-27", [("2026-11-27 14:30", "2026-11-27 18:00")]),
    (sessions.XNYS, "2026-11-26", []),  # Thanksgiving
    # After the spring-forward on Sunday 8 Mar 2026: EDT (UTC-4), 09:30 = 13:30 UTC.
    (sessions.XNYS, "2026-03-09", [("2026-03-09 13:30", "2026-03-09 20:00")]),
    (sessions.XNYS, "2025-01-09", []),  # National Day of Mourning
    (sessions.XNYS, "2027-12-24", []),  # Christmas observed
    (sessions.XNYS, "2027-12-31", [("2027-12-31 14:30", "2027-12-31 21:00")]),
    # FX closes Friday 17:00 EST = 22:00 UTC, reopens Sunday 17:00 EDT = 21:00 UTC.
    (sessions.FOREX, "2026-03-06", [("2026-03-06 00:00", "2026-03-06 22:00")]),
    (sessions.FOREX, "2026-03-07", []),
    (sessions.FOREX, "2026-03-08", [("2026-03-08 21:00", "2026-03-09 00:00")]),
    # Autumn: Friday 31 Oct 2025 closes 17:00 EDT = 21:00 UTC; Sunday 2 Nov opens 22:00 UTC.
    (sessions.FOREX, "2025-10-31", [("2025-10-31 00:00", "2025-10-31 21:00")]),
    (sessions.FOREX, "2025-11-02", [("2025-11-02 22:00", "2025-11-03 00:00")]),
    # Christmas 2026 is a Friday: FX shut from Thursday 17:00 EST to Sunday 17:00.
    (sessions.FOREX, "2026-12-24", [("2026-12-24 00:00", "2026-12-24 22:00")]),
    (sessions.FOREX, "2026-12-25", []),
    # CME, Chicago on CST (UTC-6): halt 16:00-17:00 = 22:00-23:00 UTC.
    (sessions.CME_EQUITY, "2026-12-02",
     [("2026-12-02 00:00", "2026-12-02 22:00"), ("2026-12-02 23:00", "2026-12-03 00:00")]),
    # Sunday open 17:00 CDT = 22:00 UTC; Saturday closed.
    (sessions.CME_EQUITY, "2026-06-13", []),
    (sessions.CME_EQUITY, "2026-06-14", [("2026-06-14 22:00", "2026-06-15 00:00")]),
    # Thanksgiving 2026: halt at 12:00 CST = 18:00 UTC, next session from 23:00 UTC.
    (sessions.CME_EQUITY, "2026-11-26",
     [("2026-11-26 00:00", "2026-11-26 18:00"), ("2026-11-26 23:00", "2026-11-27 00:00")]),
]  # fmt: skip


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("name", "day", "want"), ANCHORS)
def test_table_anchors(name: str, day: str, want: list[tuple[str, str]]) -> None:
    start = utc(f"{day} 00:00")
    end = min(start + timedelta(days=1), sessions.covered(name)[1])
    got = sessions.sessions(name, start, end)
    assert got == [(utc(a), utc(b)) for a, b in want]


TABLES = {
    "NYSE_HOLIDAYS": sessions.NYSE_HOLIDAYS,
    "NYSE_EARLY_CLOSES": sessions.NYSE_EARLY_CLOSES,
    "CME_CLOSED": sessions.CME_CLOSED,
    "CME_HALTS": sessions.CME_HALTS,
    "CME_UNSTATED": sessions.CME_UNSTATED,
    "FX_CLOSED": sessions.FX_CLOSED,
}


@pytest.mark.parametrize("table", TABLES)
def test_table_is_well_formed(table: str) -> None:
    years = TABLES[table]
    assert sorted(years) == list(range(sessions.FIRST_YEAR, sessions.LAST_YEAR + 1))
    for year, days in years.items():
        assert list(days) == sorted(set(days)), f"{table}[{year}]: unsorted or repeated"
        for day in days:
            assert day.year == year and day.weekday() < 5, f"{table}[{year}]: {day}"
    # Ten NYSE holidays a year, eleven with the 2025 day of mourning.
    if table == "NYSE_HOLIDAYS":
        assert {y: len(d) for y, d in years.items()} == {
            2023: 10,
            2024: 10,
            2025: 11,
            2026: 10,
            2027: 10,
        }


def test_no_date_is_both_closed_and_shortened() -> None:
    def flat(table: Mapping[int, tuple[date, ...]]) -> set[date]:
        return {d for days in table.values() for d in days}

    assert not flat(sessions.NYSE_HOLIDAYS) & flat(sessions.NYSE_EARLY_CLOSES)
    cme = [flat(sessions.CME_CLOSED), flat(sessions.CME_HALTS), flat(sessions.CME_UNSTATED)]
    assert not (cme[0] & cme[1] or cme[0] & cme[2] or cme[1] & cme[2])


def test_outside_the_table_fails_clearly() -> None:
    tf = Timeframe.parse("1m")
    with pytest.raises(OutsideSessionTable, match=r"covers .* \(sessions dated 2023-2027\)"):
        sessions.sessions(sessions.XNYS, datetime(2022, 12, 30, tzinfo=UTC), START)
    with pytest.raises(OutsideSessionTable, match="add the year"):
        sessions.has_bar(sessions.FOREX, tf, datetime(2028, 1, 3, 12, tzinfo=UTC))
    # Inside the table, the last covered evening is still answered.
    assert sessions.has_bar(sessions.XNYS, tf, datetime(2027, 12, 31, 20, 59, tzinfo=UTC))
    assert sessions.has_bar(sessions.CRYPTO, tf, datetime(2030, 1, 1, tzinfo=UTC))


def test_only_known_calendars() -> None:
    assert sessions.calendar_name(DataProfile.EQUITY, "") == "XNYS"
    assert sessions.calendar_name(DataProfile.EQUITY, "NYSE") == "XNYS"
    assert sessions.calendar_name(DataProfile.FUTURES, "") == "CME_Equity"
    with pytest.raises(ValueError, match="unknown calendar 'XLON'"):
        sessions.calendar_name(DataProfile.EQUITY, "XLON")
    with pytest.raises(ValueError, match="unknown calendar"):
        sessions.calendar_name(DataProfile.FOREX, "XNYS")
