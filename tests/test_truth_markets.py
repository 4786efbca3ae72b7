"""The simulator's truth per market: bars only in the sessions of its
hand-checked table (sim/sessions.py, the oracle; never the daemon's
calendars), and illiquid bars that sparse venues leave out."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from candled.domain import DataProfile, SeriesKey
from candled_sim import sessions
from candled_sim.scenario import ScenarioError, parse_scenario
from candled_sim.sessions import OutsideSessionTable
from candled_sim.truth import Market, Truth

LISTED = datetime(2023, 1, 1, tzinfo=UTC)  # the table's first year
NOW = datetime(2027, 1, 4, tzinfo=UTC)
AAPL = SeriesKey("sim", "AAPL", "1m")
EURUSD = SeriesKey("sim", "EUR_USD", "5m")
ES = SeriesKey("sim", "ES", "15m")
# Thanksgiving week 2026: a holiday (26th; CME halts at noon), an early close
# (27th), a weekend.
THANKSGIVING = (datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
# New York springs forward on Sunday 8 March 2026: FX reopens an hour earlier in UTC.
SPRING = (datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC))
# Christmas 2026 is a Friday: FX and CME shut for it, NYSE closes early on the 24th.
CHRISTMAS = (datetime(2026, 12, 21, tzinfo=UTC), datetime(2026, 12, 29, tzinfo=UTC))


def truth(illiquid: float = 0.0) -> Truth:
    return Truth(
        3,
        {"AAPL": LISTED, "EUR_USD": LISTED, "ES": LISTED, "BTCUSD": LISTED},
        markets={
            "AAPL": Market(DataProfile.EQUITY, "XNYS", illiquid),
            "EUR_USD": Market(DataProfile.FOREX),
            "ES": Market(DataProfile.FUTURES, "CME_Equity"),
        },
    )


@pytest.mark.parametrize("window", [THANKSGIVING, SPRING, CHRISTMAS], ids=["thanks", "dst", "xmas"])
@pytest.mark.parametrize("key", [AAPL, EURUSD, ES], ids=lambda k: k.symbol)
def test_bars_are_exactly_the_table_grid(key: SeriesKey, window: tuple[datetime, datetime]) -> None:
    start, end = window
    market = truth().market(key.symbol)
    name = sessions.calendar_name(market.profile, market.calendar)
    expected = sessions.bar_ranges(name, key.tf, start, end)
    grid = [ts for a, b in expected for ts in key.tf.bars(a, b)]
    assert grid  # every window has sessions
    assert [c.ts for c in truth().candles(key, start, end, NOW)] == grid
    assert list(itertools.islice(truth().opens_before(key, end), len(grid))) == grid[::-1]


def day(key: SeriesKey, d: datetime) -> list[datetime]:
    return [c.ts for c in truth().candles(key, d, d + timedelta(days=1), NOW)]


def test_equity_holiday_and_early_close() -> None:
    assert day(AAPL, datetime(2026, 11, 26, tzinfo=UTC)) == []  # Thanksgiving
    friday = day(AAPL, datetime(2026, 11, 27, tzinfo=UTC))
    assert friday[0] == datetime(2026, 11, 27, 14, 30, tzinfo=UTC)  # 09:30 New York (EST)
    assert friday[-1] == datetime(2026, 11, 27, 17, 59, tzinfo=UTC)  # closes 13:00 New York
    assert day(AAPL, datetime(2025, 1, 9, tzinfo=UTC)) == []  # day of mourning
    summer = day(AAPL, datetime(2026, 7, 2, tzinfo=UTC))  # EDT; the holiday is Friday the 3rd
    assert (summer[0].hour, summer[-1].hour, len(summer)) == (13, 19, 390)


def test_forex_week_follows_new_york_across_dst() -> None:
    fx = SeriesKey("sim", "EUR_USD", "1h")
    friday = day(fx, datetime(2026, 3, 6, tzinfo=UTC))
    assert friday[-1] == datetime(2026, 3, 6, 21, tzinfo=UTC)  # closes 17:00 EST = 22:00 UTC
    assert day(fx, datetime(2026, 3, 7, tzinfo=UTC)) == []  # Saturday
    sunday = day(fx, datetime(2026, 3, 8, tzinfo=UTC))
    assert sunday[0] == datetime(2026, 3, 8, 21, tzinfo=UTC)  # opens 17:00 EDT = 21:00 UTC


def test_futures_daily_halt_sunday_open_and_holiday() -> None:
    es = SeriesKey("sim", "ES", "1h")
    wednesday = day(es, datetime(2026, 12, 2, tzinfo=UTC))
    assert datetime(2026, 12, 2, 22, tzinfo=UTC) not in wednesday  # 16:00-17:00 Chicago (CST)
    assert len(wednesday) == 23
    assert day(es, datetime(2026, 12, 5, tzinfo=UTC)) == []  # Saturday
    assert day(es, datetime(2026, 12, 6, tzinfo=UTC))[0] == datetime(2026, 12, 6, 23, tzinfo=UTC)
    thanksgiving = day(es, datetime(2026, 11, 26, tzinfo=UTC))
    assert thanksgiving[-2] == datetime(2026, 11, 26, 17, tzinfo=UTC)  # halts 12:00 Chicago
    assert thanksgiving[-1] == datetime(2026, 11, 26, 23, tzinfo=UTC)  # reopens 17:00
    assert day(es, datetime(2026, 12, 25, tzinfo=UTC)) == []  # Christmas: closed


def test_outside_the_table_the_truth_fails_clearly() -> None:
    listed = datetime(2020, 1, 1, tzinfo=UTC)
    t = Truth(3, {"AAPL": listed, "BTCUSD": listed}, markets={"AAPL": Market(DataProfile.EQUITY)})
    old = datetime(2022, 6, 1, tzinfo=UTC)
    with pytest.raises(OutsideSessionTable, match=r"XNYS sessions .* add the year"):
        t.candles(AAPL, old, old + timedelta(days=1), NOW)
    btc = SeriesKey("sim", "BTCUSD", "1h")  # crypto needs no table
    assert len(t.candles(btc, old, old + timedelta(days=1), NOW)) == 24


def test_sparse_candles_leave_out_the_illiquid_bars_only() -> None:
    start, end = datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)
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
    saturday = datetime(2026, 11, 28, tzinfo=UTC)
    assert len(truth().candles(btc, saturday, saturday + timedelta(days=1), NOW)) == 24


def test_scenario_symbols_take_a_market() -> None:
    scenario = parse_scenario(
        {
            "symbols": [
                {"symbol": "AAPL", "profile": "EQUITY", "calendar": "XNYS", "illiquid": 0.1},
                {"symbol": "ES", "profile": "FUTURES"},
                {"symbol": "BTCUSD"},
            ]
        },
        NOW,
    )
    assert scenario.markets["AAPL"] == Market(DataProfile.EQUITY, "XNYS", 0.1)
    assert scenario.markets["ES"] == Market(DataProfile.FUTURES, "")
    assert scenario.markets["BTCUSD"] == Market()
    with pytest.raises(ScenarioError, match="unknown calendar"):
        parse_scenario({"symbols": [{"symbol": "X", "profile": "EQUITY", "calendar": "NOPE"}]}, NOW)
    # A calendar the daemon knows but the simulator's table does not is refused too.
    with pytest.raises(ScenarioError, match=r"unknown calendar 'XLON'.* session table"):
        parse_scenario({"symbols": [{"symbol": "X", "profile": "EQUITY", "calendar": "XLON"}]}, NOW)
    with pytest.raises(ScenarioError, match="illiquid"):
        parse_scenario({"symbols": [{"symbol": "X", "illiquid": 1.5}]}, NOW)
