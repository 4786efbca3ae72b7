"""Fuzzing the candle validator: any candle and any clock get a verdict, never an exception.

`problem` runs on every candle before the store; an exception there (a bar
whose close lies past year 9999, a clock at the end of the datetime range)
would escape intake and restart the venue instead of quarantining one candle.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled.validate import CLOCK_SKEW, problem

FUZZ = settings(
    max_examples=max(200, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# The ends of the datetime range, where adding a bar or the clock skew overflows.
EDGE_TIMES = [
    datetime.min.replace(tzinfo=UTC),
    datetime(1, 1, 1, 0, 1, tzinfo=UTC),
    datetime(1, 1, 3, tzinfo=UTC),  # the 3-day bar holding it opens before year one
    datetime(9999, 12, 31, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    datetime(9999, 12, 27, tzinfo=UTC),  # a Monday: the last week's open
    datetime(9999, 12, 1, tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
]
TIMES = st.datetimes(timezones=st.just(UTC)) | st.sampled_from(EDGE_TIMES)
PRICES = st.floats() | st.sampled_from([0.0, -0.0, 1.0, 1e308, -1e308, 5e-324])
SKEWS = st.just(CLOCK_SKEW) | st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1))


@FUZZ
@given(
    timeframe=st.sampled_from(SUPPORTED),
    ts=TIMES,
    prices=st.tuples(PRICES, PRICES, PRICES, PRICES, PRICES),
    now=TIMES,
    skew=SKEWS,
)
@example(
    timeframe="1m",
    ts=datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    prices=(1.0, 1.0, 1.0, 1.0, 0.0),
    now=datetime(2026, 12, 1, tzinfo=UTC),
    skew=CLOCK_SKEW,
)
@example(
    timeframe="1m",
    ts=datetime(2026, 12, 1, tzinfo=UTC),
    prices=(1.0, 1.0, 1.0, 1.0, 0.0),
    now=datetime.max.replace(tzinfo=UTC),
    skew=CLOCK_SKEW,
)
@example(
    timeframe="3d",
    ts=datetime(1, 1, 1, tzinfo=UTC),
    prices=(1.0, 1.0, 1.0, 1.0, 0.0),
    now=datetime(2026, 12, 1, tzinfo=UTC),
    skew=CLOCK_SKEW,
)
def test_any_candle_gets_a_verdict(
    timeframe: str,
    ts: datetime,
    prices: tuple[float, float, float, float, float],
    now: datetime,
    skew: timedelta,
) -> None:
    candle = Candle(SeriesKey("v", "S", timeframe), ts, *prices)
    verdict = problem(candle, now, skew)
    assert verdict is None or isinstance(verdict, str)


def test_a_bar_closing_past_the_datetime_range_closes_in_the_future() -> None:
    candle = Candle(
        SeriesKey("v", "S", "1m"), datetime(9999, 12, 31, 23, 59, tzinfo=UTC), 1, 1, 1, 1, 0
    )
    assert problem(candle, datetime(2026, 12, 1, tzinfo=UTC)) == "bar closes in the future"


def test_a_clock_at_the_end_of_the_range_accepts_closed_bars() -> None:
    candle = Candle(SeriesKey("v", "S", "1m"), datetime(2026, 12, 1, tzinfo=UTC), 1, 1, 1, 1, 0)
    assert problem(candle, datetime.max.replace(tzinfo=UTC)) is None


def test_a_bar_whose_grid_opens_before_year_one_is_not_aligned() -> None:
    # 3-day bars align to the epoch: the one holding 0001-01-01 opens on 0000-12-31.
    candle = Candle(SeriesKey("v", "S", "3d"), datetime(1, 1, 1, tzinfo=UTC), 1, 1, 1, 1, 0)
    assert problem(candle, datetime(2026, 12, 1, tzinfo=UTC)) == "ts not aligned to 3d"
