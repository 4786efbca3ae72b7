"""Series lag (in /health and /metrics) follows the market calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from candled.config import SeriesSpec
from candled.domain import DataProfile, SeriesKey
from candled.health import lag_seconds

BTC = SeriesKey("binance", "BTCUSDT", "1m")
AAPL = SeriesKey("alpaca", "AAPL", "1m")
CRYPTO = SeriesSpec(BTC, DataProfile.CRYPTO, "", True, timedelta(days=1))
EQUITY = SeriesSpec(AAPL, DataProfile.EQUITY, "XNYS", True, timedelta(days=1))


def test_up_to_date_is_zero_and_a_late_bar_counts_from_its_close() -> None:
    now = datetime(2024, 12, 4, 12, 0, 20, tzinfo=UTC)
    assert lag_seconds(CRYPTO, datetime(2024, 12, 4, 11, 59, tzinfo=UTC), now) == 0.0
    # The 11:59 bar closed 20 s ago and is not stored yet.
    assert lag_seconds(CRYPTO, datetime(2024, 12, 4, 11, 58, tzinfo=UTC), now) == 20.0
    # Ten bars behind: the oldest missing one (11:50) closed 9 min 20 s ago.
    assert lag_seconds(CRYPTO, datetime(2024, 12, 4, 11, 49, tzinfo=UTC), now) == 560.0


def test_an_equity_series_is_not_behind_over_a_weekend_or_a_holiday() -> None:
    friday_close = datetime(2024, 11, 29, 17, 59, tzinfo=UTC)  # early close, 13:00 New York
    saturday = datetime(2024, 11, 30, 15, 0, tzinfo=UTC)
    assert lag_seconds(EQUITY, friday_close, saturday) == 0.0
    thanksgiving = datetime(2024, 11, 28, 15, 0, tzinfo=UTC)
    wednesday_close = datetime(2024, 11, 27, 20, 59, tzinfo=UTC)
    assert lag_seconds(EQUITY, wednesday_close, thanksgiving) == 0.0
    # Monday 14:35 UTC: the session opened at 14:30; 14:30 closed 4 minutes ago.
    monday = datetime(2024, 12, 2, 14, 35, tzinfo=UTC)
    assert lag_seconds(EQUITY, friday_close, monday) == 240.0
