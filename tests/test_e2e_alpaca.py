"""End to end on the Alpaca personality: an EQUITY series over a range holding
the most recent NYSE holiday and early close, with illiquid bars (no bar at
all on Alpaca), ends OK after backfill, the live stream and one heal cycle,
the illiquid bars confirmed empty rather than repaired forever.

The daemon runs on the wall clock, so the range is picked from the calendar at
run time: on any date it reaches back to the last holiday and the last early
close before now (up to a year: 15m bars keep that light). The market may be
closed while the test runs; the stream then carries nothing, and the live
minute series is filled by its catch-up backfill alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pandas as pd
import pandas_market_calendars as mcal
import pytest

from daemon import clock
from daemon.domain import SeriesKey
from daemon.sim.alpaca import SIM_KEY, SIM_SECRET
from daemon.sim.scenario import parse_scenario
from daemon.sim.server import SimExchange
from tests.daemon_proc import (
    compare_with_truth,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)

SYMBOL = "EQTY"
RUN_S = 40
SETTLE_S = 35  # bars closed this close to the stop may still be on their way (or their "u")
LIVE_LOOKBACK = timedelta(days=6)  # the minute series: always holds the last session


def last_holiday_and_early_close(now: datetime) -> tuple[date, datetime]:
    """The most recent NYSE weekday holiday, and the most recent early close, before now."""
    calendar = mcal.get_calendar("XNYS")
    schedule = calendar.schedule(start_date=(now - timedelta(days=400)).date(), end_date=now.date())
    closes = calendar.early_closes(schedule)["market_close"]
    early_close = max(ts.to_pydatetime() for ts in closes if ts.to_pydatetime() <= now)
    weekdays = pd.bdate_range(schedule.index[0], now.date())
    holiday = max(d.date() for d in weekdays if d not in schedule.index)
    return holiday, early_close


@pytest.mark.timeout(240)
async def test_equity_series_with_holiday_early_close_and_illiquid_bars_ends_ok(
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock.now()
    holiday, early_close = last_holiday_and_early_close(now)
    oldest = min(datetime.combine(holiday, datetime.min.time(), UTC), early_close)
    lookback_days = (now - oldest).days + 2
    depth = {"15m": timedelta(days=lookback_days), "1m": LIVE_LOOKBACK}
    scenario = {"seed": 21, "symbols": [{"symbol": SYMBOL, "listed": "-500d", "profile": "EQUITY",
                                         "calendar": "XNYS", "illiquid": 0.1}]}  # fmt: skip
    # Credentials come from the environment, as a systemd EnvironmentFile would set them.
    monkeypatch.setenv("CANDLED_TEST_ALPACA_KEY", SIM_KEY)
    monkeypatch.setenv("CANDLED_TEST_ALPACA_SECRET", SIM_SECRET)

    sim = SimExchange(parse_scenario(scenario, now), protocol="alpaca")
    _, port = await sim.start("127.0.0.1", 0)
    try:
        body = venue_toml(
            "alpaca", port, kind="alpaca", rate_capacity=200,
            api_key_env='"CANDLED_TEST_ALPACA_KEY"', api_secret_env='"CANDLED_TEST_ALPACA_SECRET"',
            options='{ feed = "sip" }',
        )  # fmt: skip
        equity = {"profile": '"EQUITY"', "calendar": '"XNYS"'}
        # Alpaca streams minute bars only: the live 15m series is polled.
        body += series_toml("alpaca", [SYMBOL], ["15m"], lookback=f'"{lookback_days}d"',
                            **equity)  # fmt: skip
        body += series_toml("alpaca", [SYMBOL], ["1m"], lookback=f'"{LIVE_LOOKBACK.days}d"',
                            **equity)  # fmt: skip
        config = write_config(tmp_path, body)
        started = clock.now()
        async with running_daemon(config, tsdb_dsn, tmp_path / "daemon.log") as proc:
            await asyncio.sleep(RUN_S)
            assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
            stopped = clock.now()
            assert await stop(proc) == 0
        assert sim.counters.ws_connections >= 1, "the daemon never opened the stream"
        await repair_pass(config, tsdb_dsn, tmp_path)
    finally:
        await sim.stop()

    logs = (tmp_path / "daemon.log").read_text() + (tmp_path / "repair.log").read_text()
    assert SIM_SECRET not in logs, "the API secret was logged"
    assert sim.counters.sent_429 == 0
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        for timeframe, lookback in depth.items():
            key = SeriesKey("alpaca", SYMBOL, timeframe)
            tf = key.tf
            # The daemon took its lookback start a moment after `started`.
            lo = tf.add(tf.ceil(started - lookback), 1)
            hi = tf.floor(stopped - timedelta(seconds=SETTLE_S))
            diff = await compare_with_truth(conn, sim.truth, key, lo, hi, sparse=True)
            assert diff.equal, f"{key}: {diff}"
            status = await conn.fetchrow(
                """SELECT status, missing_bars, confirmed_empty_bars FROM series_status
                   WHERE venue = 'alpaca' AND symbol = $1 AND timeframe = $2""",
                SYMBOL, timeframe,
            )  # fmt: skip
            assert status is not None
            assert status["status"] == "OK", f"{key}: {dict(status)}"
            assert status["missing_bars"] == 0
            # The illiquid bars are confirmed empty, not holes to repair forever.
            assert status["confirmed_empty_bars"] > 0, f"{key}: {dict(status)}"

        # The 15m range holds the holiday (no bar) and the early close (none after it).
        key = SeriesKey("alpaca", SYMBOL, "15m")
        stored = [r["ts"] for r in await conn.fetch(
            "SELECT ts FROM candles WHERE venue = 'alpaca' AND symbol = $1 AND timeframe = '15m'",
            SYMBOL,
        )]  # fmt: skip
        assert min(stored) < datetime.combine(holiday, datetime.min.time(), UTC)
        assert not any(ts.date() == holiday for ts in stored)
        early_day = [ts for ts in stored if ts.date() == early_close.date()]
        assert early_day and max(early_day) < early_close
        assert max(early_day) >= early_close - timedelta(hours=1)
    finally:
        await conn.close()
