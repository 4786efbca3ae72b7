"""Session calendars against hand-checked cases (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candled.calendars import (
    Overrides,
    count_expected,
    expected_ranges,
    is_open,
    last_expected_bar,
    load_overrides,
    sessions,
    validate_calendar,
)
from candled.domain import DataProfile, Timeframe

EQUITY, FUTURES, FOREX, CRYPTO = (
    DataProfile.EQUITY,
    DataProfile.FUTURES,
    DataProfile.FOREX,
    DataProfile.CRYPTO,
)
M1, H1, D1 = Timeframe.parse("1m"), Timeframe.parse("1h"), Timeframe.parse("1d")
FIXTURE = Path(__file__).parent / "fixtures" / "calendar_overrides.toml"


def t(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def day_of(year: int, month: int, day: int) -> tuple[datetime, datetime]:
    start = t(year, month, day)
    return start, start + timedelta(days=1)


# --- EQUITY (XNYS) ---------------------------------------------------------------


def test_nyse_thanksgiving_is_closed_and_the_day_after_closes_at_13_new_york() -> None:
    assert sessions(EQUITY, "", t(2025, 11, 26), t(2025, 11, 29)) == [
        (t(2025, 11, 26, 14, 30), t(2025, 11, 26, 21)),
        (t(2025, 11, 28, 14, 30), t(2025, 11, 28, 18)),  # 13:00 EST
    ]
    assert expected_ranges(EQUITY, "XNYS", M1, *day_of(2025, 11, 27)) == []
    # The last 1m bar opens 17:59 UTC; 3.5 hours of bars.
    assert expected_ranges(EQUITY, "XNYS", M1, *day_of(2025, 11, 28)) == [
        (t(2025, 11, 28, 14, 30), t(2025, 11, 28, 18))
    ]
    assert count_expected(EQUITY, "XNYS", M1, *day_of(2025, 11, 28)) == 210


@pytest.mark.parametrize(
    ("day", "first_bar"),
    [
        ((2026, 3, 6), t(2026, 3, 6, 14, 30)),  # Friday before the 2026-03-08 switch: EST
        ((2026, 3, 9), t(2026, 3, 9, 13, 30)),  # Monday after: EDT
        ((2026, 10, 30), t(2026, 10, 30, 13, 30)),  # Friday before the 2026-11-01 switch
        ((2026, 11, 2), t(2026, 11, 2, 14, 30)),  # Monday after
    ],
)
def test_first_nyse_minute_bar_follows_new_york_dst(
    day: tuple[int, int, int], first_bar: datetime
) -> None:
    ranges = expected_ranges(EQUITY, "", M1, *day_of(*day))
    assert ranges == [(first_bar, first_bar + timedelta(hours=6, minutes=30))]


def test_nyse_hourly_bar_starting_before_the_open_is_expected() -> None:
    # The 14:00 bar overlaps the 14:30 open; the 20:00 bar is the last before 21:00.
    assert expected_ranges(EQUITY, "", H1, *day_of(2025, 11, 26)) == [
        (t(2025, 11, 26, 14), t(2025, 11, 26, 21))
    ]


def test_nyse_daily_bars_are_one_per_session() -> None:
    # November 2025: 20 weekdays, minus Thanksgiving.
    assert count_expected(EQUITY, "", D1, t(2025, 11, 1), t(2025, 12, 1)) == 19
    assert expected_ranges(EQUITY, "", D1, t(2025, 11, 24), t(2025, 11, 30)) == [
        (t(2025, 11, 24), t(2025, 11, 27)),
        (t(2025, 11, 28), t(2025, 11, 29)),
    ]


def test_weekly_and_monthly_bars_exist_for_periods_with_a_session() -> None:
    assert count_expected(EQUITY, "", Timeframe.parse("1M"), t(2025, 1, 1), t(2026, 1, 1)) == 12
    # 2025-12-29 .. 2026-01-04 has sessions; every week of the year does.
    assert count_expected(EQUITY, "", Timeframe.parse("1w"), t(2025, 1, 6), t(2026, 1, 5)) == 52


def test_lunch_breaks_split_sessions() -> None:
    # Hong Kong: 09:30-12:00 and 13:00-16:00 local (UTC+8), no DST.
    assert sessions(EQUITY, "XHKG", *day_of(2025, 11, 20)) == [
        (t(2025, 11, 20, 1, 30), t(2025, 11, 20, 4)),
        (t(2025, 11, 20, 5), t(2025, 11, 20, 8)),
    ]


# --- FUTURES (CME_Equity) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "halt_utc"),
    [
        ((2026, 1, 14), 22),  # Wednesday, CST (UTC-6): 16:00-17:00 Chicago = 22:00-23:00 UTC
        ((2025, 7, 16), 21),  # Wednesday, CDT (UTC-5): 21:00-22:00 UTC
    ],
)
def test_cme_daily_maintenance_halt(day: tuple[int, int, int], halt_utc: int) -> None:
    halt = datetime(*day, halt_utc, tzinfo=UTC)
    ranges = expected_ranges(FUTURES, "", M1, *day_of(*day))
    assert ranges == [(t(*day), halt), (halt + timedelta(hours=1), t(*day) + timedelta(days=1))]
    assert is_open(FUTURES, "CME_Equity", halt - timedelta(minutes=1))
    assert not is_open(FUTURES, "CME_Equity", halt)
    assert not is_open(FUTURES, "CME_Equity", halt + timedelta(minutes=59))


@pytest.mark.parametrize(
    ("friday", "friday_close", "sunday", "sunday_open"),
    [
        ((2026, 1, 9), 22, (2026, 1, 11), 23),  # CST
        ((2025, 7, 11), 21, (2025, 7, 13), 22),  # CDT
    ],
)
def test_cme_closes_friday_16_and_opens_sunday_17_chicago(
    friday: tuple[int, int, int], friday_close: int, sunday: tuple[int, int, int], sunday_open: int
) -> None:
    close = datetime(*friday, friday_close, tzinfo=UTC)
    reopen = datetime(*sunday, sunday_open, tzinfo=UTC)
    found = sessions(FUTURES, "", close - timedelta(hours=1), reopen + timedelta(hours=1))
    assert found == [(close - timedelta(hours=1), close), (reopen, reopen + timedelta(hours=1))]


# --- FOREX -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("friday", "sunday", "utc_hour"),
    [
        ((2025, 11, 28), (2025, 11, 30), 22),  # EST
        ((2025, 7, 18), (2025, 7, 20), 21),  # EDT
        ((2026, 3, 6), (2026, 3, 8), None),  # DST starts on the Sunday: 22:00 then 21:00
    ],
)
def test_forex_is_closed_from_friday_17_to_sunday_17_new_york(
    friday: tuple[int, int, int], sunday: tuple[int, int, int], utc_hour: int | None
) -> None:
    close = datetime(*friday, utc_hour or 22, tzinfo=UTC)
    reopen = datetime(*sunday, utc_hour or 21, tzinfo=UTC)
    found = sessions(FOREX, "", t(*friday), t(*sunday) + timedelta(days=1))
    assert found == [(t(*friday), close), (reopen, t(*sunday) + timedelta(days=1))]


def test_forex_is_closed_on_christmas() -> None:
    # Trading day 25 Dec removed: 24 Dec 17:00 to 25 Dec 17:00 New York (EST).
    found = sessions(FOREX, "", t(2025, 12, 24), t(2025, 12, 27))
    assert found == [
        (t(2025, 12, 24), t(2025, 12, 24, 22)),
        (t(2025, 12, 25, 22), t(2025, 12, 26, 22)),
    ]
    assert not is_open(FOREX, "", t(2025, 12, 25, 12))


def test_forex_holidays_are_configurable_and_cross_decades() -> None:
    # 2020-01-01 is a Wednesday; its trading day belongs to the 2020s block, the
    # session before it to the 2010s block.
    found = sessions(FOREX, "", t(2019, 12, 31), t(2020, 1, 3))
    assert found == [(t(2019, 12, 31), t(2019, 12, 31, 22)), (t(2020, 1, 1, 22), t(2020, 1, 3))]
    assert sessions(FOREX, "", t(2019, 12, 31), t(2020, 1, 3), forex_holidays=()) == [
        (t(2019, 12, 31), t(2020, 1, 3))
    ]


# --- CRYPTO ------------------------------------------------------------------------


def test_crypto_is_always_open() -> None:
    assert count_expected(CRYPTO, "", M1, *day_of(2025, 12, 25)) == 1440
    assert expected_ranges(CRYPTO, "", H1, t(2025, 1, 1, 0, 30), t(2025, 1, 1, 3)) == [
        (t(2025, 1, 1, 1), t(2025, 1, 1, 3))
    ]


# --- last_expected_bar ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "tf", "now", "expected"),
    [
        (EQUITY, M1, t(2025, 11, 22, 12), t(2025, 11, 21, 20, 59)),  # Saturday
        (EQUITY, D1, t(2025, 11, 22, 12), t(2025, 11, 21)),
        (EQUITY, M1, t(2025, 11, 24, 10), t(2025, 11, 21, 20, 59)),  # Monday before the open
        (EQUITY, M1, t(2025, 11, 24, 15, 0), t(2025, 11, 24, 14, 59)),  # in session
        (EQUITY, M1, t(2025, 11, 28, 20), t(2025, 11, 28, 17, 59)),  # after an early close
        (FOREX, H1, t(2025, 11, 29, 12), t(2025, 11, 28, 21)),  # Saturday
        (CRYPTO, M1, t(2025, 11, 29, 12, 0), t(2025, 11, 29, 11, 59)),
    ],
)
def test_last_expected_bar(
    profile: DataProfile, tf: Timeframe, now: datetime, expected: datetime
) -> None:
    assert last_expected_bar(profile, "", tf, now) == expected


# --- overrides -----------------------------------------------------------------------


def test_override_file_takes_precedence() -> None:
    overrides = load_overrides(FIXTURE)
    week = (t(2025, 11, 24), t(2025, 11, 29))
    assert sessions(EQUITY, "XNYS", *week, overrides=overrides) == [
        (t(2025, 11, 24, 14, 30), t(2025, 11, 24, 21)),
        (t(2025, 11, 26, 14, 30), t(2025, 11, 26, 17)),  # early close 12:00 EST
        (t(2025, 11, 27, 14, 30), t(2025, 11, 27, 18)),  # reopened by override
        (t(2025, 11, 28, 14, 30), t(2025, 11, 28, 18)),
    ]
    # Keys are the names series use: "NYSE" is not overridden by [XNYS].
    assert len(sessions(EQUITY, "NYSE", *week, overrides=overrides)) == 4
    assert sessions(FOREX, "", t(2025, 12, 26), t(2025, 12, 27), overrides=overrides) == []
    assert sessions(EQUITY, "XNYS", *week, overrides=Overrides()) == sessions(EQUITY, "XNYS", *week)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[NOPE]\nclosed = ["2025-01-02"]', r"\[NOPE\]: unknown calendar"),
        ("[XNYS]\nclosd = []", r"\[XNYS\]\.closd: unknown key"),
        ('[XNYS]\nclosed = ["2025-13-01"]', r"\[XNYS\]\.closed\[0\]: expected a date"),
        ('[XNYS.early_closes]\n2025-11-28 = "1pm"', r"early_closes\.2025-11-28: expected a local"),
        ('[XNYS]\nclosed = [2025-11-28]\nearly_closes = { 2025-11-28 = "13:00" }', "also listed"),
        ("[XNYS]\nclosed = [", "calendar_overrides"),
    ],
)
def test_override_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "calendar_overrides.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_overrides(path)


# --- validation ----------------------------------------------------------------------


def test_calendar_names_are_validated() -> None:
    assert validate_calendar(EQUITY, "") == "XNYS"
    assert validate_calendar(FUTURES, "") == "CME_Equity"
    assert validate_calendar(EQUITY, "XLON") == "XLON"
    with pytest.raises(ValueError, match="'NOPE'"):
        validate_calendar(EQUITY, "NOPE")
    with pytest.raises(ValueError, match="'NOPE'"):
        sessions(FUTURES, "NOPE", t(2025, 1, 1), t(2025, 1, 2))
    with pytest.raises(ValueError, match="leave calendar empty"):
        validate_calendar(CRYPTO, "XNYS")
    with pytest.raises(ValueError, match="use profile FOREX"):
        validate_calendar(EQUITY, "FOREX")


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        sessions(EQUITY, "", datetime(2025, 1, 1), t(2025, 1, 2))


# --- the bar rule, against brute force -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    profile_calendar=st.sampled_from([(EQUITY, ""), (FUTURES, ""), (FOREX, ""), (EQUITY, "XHKG")]),
    tf=st.sampled_from([Timeframe.parse(s) for s in ("15m", "1h", "4h", "1d")]),
    start=st.datetimes(datetime(2024, 1, 1), datetime(2026, 6, 1), timezones=st.just(UTC)),
    days=st.integers(0, 10),
)
def test_expected_bars_are_those_overlapping_a_session(
    profile_calendar: tuple[DataProfile, str], tf: Timeframe, start: datetime, days: int
) -> None:
    profile, calendar = profile_calendar
    end = start + timedelta(days=days, hours=7)
    got = {b for a, z in expected_ranges(profile, calendar, tf, start, end) for b in tf.bars(a, z)}
    open_intervals = sessions(
        profile, calendar, start - timedelta(days=40), end + timedelta(days=40)
    )
    want = {
        b
        for b in tf.bars(start, end)
        if any(a < tf.close_time(b) and b < z for a, z in open_intervals)
    }
    assert got == want
