"""The simulator's truth per market: bars only in calendar sessions, and
illiquid bars that sparse venues leave out."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from daemon import calendars
from daemon.domain import DataProfile, SeriesKey
from daemon.sim.scenario import ScenarioError, parse_scenario
from daemon.sim.truth import Market, Truth

LISTED = datetime(2020, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 12, 2, tzinfo=UTC)
AAPL = SeriesKey("sim", "AAPL", "1m")
EURUSD = SeriesKey("sim", "EUR_USD", "5m")


def truth(illiquid: float = 0.0) -> Truth:
    return Truth(
        3,
        {"AAPL": LISTED, "EUR_USD": LISTED, "BTCUSD": LISTED},
        markets={
            "AAPL": Market(DataProfile.EQUITY, "XNYS", illiquid),
            "EUR_USD": Market(DataProfile.FOREX),
        },
    )


@pytest.mark.parametrize("key", [AAPL, EURUSD])
def test_bars_are_exactly_the_calendar_grid(key: SeriesKey) -> None:
    # Thanksgiving week 2024: a holiday (28th), an early close (29th), a weekend.
    start, end = datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 12, 2, tzinfo=UTC)
    market = truth().market(key.symbol)
    expected = calendars.expected_ranges(market.profile, market.calendar, key.tf, start, end)
    grid = [ts for a, b in expected for ts in key.tf.bars(a, b)]
    assert [c.ts for c in truth().candles(key, start, end, NOW)] == grid
    assert list(itertools.islice(truth().opens_before(key, end), len(grid))) == grid[::-1]


def test_equity_holiday_and_early_close() -> None:
    day = truth().candles(AAPL, datetime(2024, 11, 28, tzinfo=UTC),
                          datetime(2024, 11, 29, tzinfo=UTC), NOW)  # fmt: skip
    assert day == []  # Thanksgiving
    friday = truth().candles(AAPL, datetime(2024, 11, 29, tzinfo=UTC),
                             datetime(2024, 11, 30, tzinfo=UTC), NOW)  # fmt: skip
    assert friday[0].ts == datetime(2024, 11, 29, 14, 30, tzinfo=UTC)
    assert friday[-1].ts == datetime(2024, 11, 29, 17, 59, tzinfo=UTC)  # closes 13:00 New York


def test_sparse_candles_leave_out_the_illiquid_bars_only() -> None:
    start, end = datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 11, 26, tzinfo=UTC)
    t = truth(illiquid=0.2)
    dense = t.candles(AAPL, start, end, NOW)
    sparse = t.candles(AAPL, start, end, NOW, sparse=True)
    assert {c.ts for c in sparse} == {c.ts for c in dense if t.traded(AAPL, c.ts)}
    assert 0.1 < 1 - len(sparse) / len(dense) < 0.3  # about the configured fraction
    # The same bar has the same values whoever serves it.
    assert set(sparse) <= set(dense)
    assert truth().candles(AAPL, start, end, NOW, sparse=True) == dense  # liquid: all bars


def test_crypto_symbols_trade_around_the_clock() -> None:
    btc = SeriesKey("sim", "BTCUSD", "1h")
    saturday = datetime(2024, 11, 30, tzinfo=UTC)
    assert len(truth().candles(btc, saturday, saturday + timedelta(days=1), NOW)) == 24


def test_scenario_symbols_take_a_market() -> None:
    scenario = parse_scenario(
        {
            "symbols": [
                {"symbol": "AAPL", "profile": "EQUITY", "calendar": "XNYS", "illiquid": 0.1},
                {"symbol": "BTCUSD"},
            ]
        },
        NOW,
    )
    assert scenario.markets["AAPL"] == Market(DataProfile.EQUITY, "XNYS", 0.1)
    assert scenario.markets["BTCUSD"] == Market()
    with pytest.raises(ScenarioError, match="unknown calendar"):
        parse_scenario({"symbols": [{"symbol": "X", "profile": "EQUITY", "calendar": "NOPE"}]}, NOW)
    with pytest.raises(ScenarioError, match="illiquid"):
        parse_scenario({"symbols": [{"symbol": "X", "illiquid": 1.5}]}, NOW)
