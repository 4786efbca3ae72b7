"""Timeframe parsing, alignment and iteration (pure)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import SUPPORTED

utc_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def t(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize("text", SUPPORTED)
def test_every_binance_interval_parses_and_round_trips(text: str) -> None:
    assert str(Timeframe.parse(text)) == text


@pytest.mark.parametrize("bad", ["", "1", "2m", "1y", "1min", "01m", "1H", "m1"])
def test_unknown_intervals_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown timeframe"):
        Timeframe.parse(bad)


def test_floor_fixed_lengths() -> None:
    ts = t(2024, 3, 5, 13, 47, 31)
    assert Timeframe.parse("1s").floor(ts.replace(microsecond=5)) == ts
    assert Timeframe.parse("1m").floor(ts) == t(2024, 3, 5, 13, 47)
    assert Timeframe.parse("15m").floor(ts) == t(2024, 3, 5, 13, 45)
    assert Timeframe.parse("4h").floor(ts) == t(2024, 3, 5, 12)
    assert Timeframe.parse("1d").floor(ts) == t(2024, 3, 5)


def test_weekly_bars_start_on_monday() -> None:
    tf = Timeframe.parse("1w")
    # 2024-03-05 is a Tuesday; its week opened Monday 2024-03-04.
    assert tf.floor(t(2024, 3, 5, 13)) == t(2024, 3, 4)
    assert tf.floor(t(2024, 3, 4)) == t(2024, 3, 4)
    assert tf.floor(t(2024, 3, 3, 23, 59)) == t(2024, 2, 26)
    assert tf.next(t(2024, 3, 4)) == t(2024, 3, 11)


def test_monthly_bars_are_calendar_months() -> None:
    tf = Timeframe.parse("1M")
    assert tf.floor(t(2024, 2, 29, 23)) == t(2024, 2, 1)
    assert tf.next(t(2024, 1, 31)) == t(2024, 2, 1)
    assert tf.next(t(2024, 12, 15)) == t(2025, 1, 1)
    assert list(tf.bars(t(2023, 11, 15), t(2024, 3, 1))) == [
        t(2023, 12, 1),
        t(2024, 1, 1),
        t(2024, 2, 1),
    ]
    assert tf.count_bars(t(2023, 11, 15), t(2024, 3, 1)) == 3
    with pytest.raises(ValueError):
        _ = tf.seconds


def test_bars_in_range_are_half_open() -> None:
    tf = Timeframe.parse("1m")
    bars = list(tf.bars(t(2024, 1, 1, 0, 0, 30), t(2024, 1, 1, 0, 3)))
    assert bars == [t(2024, 1, 1, 0, 1), t(2024, 1, 1, 0, 2)]
    assert tf.count_bars(t(2024, 1, 1, 0, 0, 30), t(2024, 1, 1, 0, 3)) == 2
    assert tf.count_bars(t(2024, 1, 1, 0, 3), t(2024, 1, 1, 0, 3)) == 0


def test_non_utc_aware_input_is_converted_naive_rejected() -> None:
    tf = Timeframe.parse("1h")
    cet = timezone(timedelta(hours=1))
    assert tf.floor(datetime(2024, 1, 1, 10, 30, tzinfo=cet)) == t(2024, 1, 1, 9)
    with pytest.raises(ValueError, match="naive"):
        tf.floor(datetime(2024, 1, 1, 10, 30))


def test_candle_rejects_naive_timestamp() -> None:
    key = SeriesKey("binance", "BTCUSDT", "1m")
    with pytest.raises(ValueError, match="naive"):
        Candle(key, datetime(2024, 1, 1), 1, 1, 1, 1, 0)


def test_series_key_parses_cli_form() -> None:
    assert SeriesKey.parse("binance:BTCUSDT:1m") == SeriesKey("binance", "BTCUSDT", "1m")
    with pytest.raises(ValueError, match="VENUE:SYMBOL:TIMEFRAME"):
        SeriesKey.parse("binance:BTCUSDT")
    with pytest.raises(ValueError, match="unknown timeframe"):
        SeriesKey.parse("binance:BTCUSDT:7m")


@given(ts=utc_datetimes, text=st.sampled_from(SUPPORTED))
def test_floor_contains_ts_and_is_aligned(ts: datetime, text: str) -> None:
    tf = Timeframe.parse(text)
    opened = tf.floor(ts)
    assert opened <= ts < tf.next(ts)
    assert tf.is_aligned(opened)
    assert tf.floor(opened) == opened
    assert tf.add(tf.add(opened, 3), -3) == opened


@given(
    a=utc_datetimes,
    span=st.integers(0, 5000),
    text=st.sampled_from(("1s", "1m", "5m", "1h", "3d", "1w")),
)
def test_count_matches_iteration(a: datetime, span: int, text: str) -> None:
    tf = Timeframe.parse(text)
    b = a + timedelta(seconds=span * tf.seconds // 7)
    assert tf.count_bars(a, b) == len(list(tf.bars(a, b)))
