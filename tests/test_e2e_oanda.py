"""End to end on the OANDA personality: the daemon process backfills a FOREX
series across the most recent weekend, polls its live bars (OANDA has no
candle stream), and after one heal cycle the store equals the simulator's
truth and the series is OK: the closed FX market is no hole, and minutes
without a price (no candle on OANDA) are confirmed empty."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from daemon import clock
from daemon.domain import Candle, SeriesKey
from daemon.sim import SimExchange, Truth, parse_scenario
from daemon.sim.oanda import SIM_TOKEN
from daemon.sim.oanda_wire import as_published
from tests.daemon_proc import (
    compare_with_truth,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)
from tests.test_e2e_collection import repair_pass

KEY = SeriesKey("oanda", "EUR_USD", "1m")
SIM_KEY = SeriesKey("sim", "EUR_USD", "1m")
# Eight days always hold one whole weekend (Friday 17:00 to Sunday 17:00 New York).
LOOKBACK = timedelta(days=8)
SCENARIO = {
    "seed": 21,
    "symbols": [{"symbol": "EUR_USD", "listed": "-60d", "profile": "FOREX", "illiquid": 0.01}],
}


class AsPublished:
    """The truth as OANDA publishes it (tick-count volumes), for `compare_with_truth`."""

    def __init__(self, truth: Truth) -> None:
        self._truth = truth

    def candles(
        self, series: SeriesKey, start: datetime, end: datetime, now: datetime, *, sparse: bool
    ) -> list[Candle]:
        bars = self._truth.candles(series, start, end, now, sparse=sparse)
        return [as_published(c) for c in bars]


@pytest.mark.timeout(180)
async def test_forex_series_across_a_weekend_ends_ok(tsdb_dsn: str, tmp_path: Path) -> None:
    tf = KEY.tf
    # The bar in progress when the daemon starts is the first one it polls.
    # Starting 10 s or more before that bar closes leaves the catch-up (three
    # requests for what has closed; about 2 s) done by then: only the poll
    # can fetch the bar.
    while clock.now().second >= 50:
        await asyncio.sleep(0.5)
    sim = SimExchange(parse_scenario(SCENARIO, clock.now()), protocol="oanda")
    _, port = await sim.start("127.0.0.1", 0)
    conn: asyncpg.Connection | None = None
    try:
        token = tmp_path / "oanda.token"
        token.write_text(SIM_TOKEN + "\n")
        body = venue_toml("oanda", port, kind="oanda", api_key_file=f'"{token}"',
                          poll_delay='"1s"')  # fmt: skip
        body += series_toml("oanda", [KEY.symbol], [KEY.timeframe], profile='"FOREX"',
                            lookback=f'"{LOOKBACK.days}d"')  # fmt: skip
        config = write_config(tmp_path, body)
        started = clock.now()
        polled = tf.floor(started)
        polled_close = tf.next(polled)
        # The market may be closed (a weekend) or the minute may have had no price.
        expect_poll = bool(sim.truth.candles(SIM_KEY, polled, polled_close, polled_close,
                                             sparse=True))  # fmt: skip
        async with running_daemon(config, tsdb_dsn, tmp_path / "daemon.log") as proc:
            conn = await asyncpg.connect(tsdb_dsn)
            if expect_poll:

                async def polled_bar_stored() -> bool:
                    try:
                        return bool(await conn.fetchval(
                            "SELECT count(*) FROM candles WHERE venue = 'oanda' AND ts = $1",
                            polled,
                        ))  # fmt: skip
                    except asyncpg.UndefinedTableError:
                        return False  # not migrated yet

                await wait_until(polled_bar_stored, within=90)
            else:
                wait = polled_close + timedelta(seconds=4) - clock.now()
                await asyncio.sleep(wait.total_seconds())
            assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert await stop(proc) == 0
        # Only what OANDA answers with 200: no bad parameter, no `to` in the
        # future, no missing token, never over the rate limit.
        assert set(sim.counters.requests_by_status) == {200}, sim.counters.requests_by_status
        await repair_pass(config, tsdb_dsn, tmp_path)

        # The daemon took its lookback a moment after `started`.
        lo, hi = tf.next(started - LOOKBACK), polled_close
        diff = await compare_with_truth(conn, AsPublished(sim.truth), KEY, lo, hi, sparse=True)
        assert diff.equal, str(diff)
        # The window held a closed FX weekend: 47 to 48 hours (DST) without a bar.
        assert tf.count_bars(lo, hi) - diff.expected >= 47 * 60
        status = await conn.fetchrow(
            "SELECT status, missing_bars FROM series_status"
            " WHERE venue = 'oanda' AND symbol = $1 AND timeframe = $2",
            KEY.symbol, KEY.timeframe,
        )  # fmt: skip
        assert status is not None and (status["status"], status["missing_bars"]) == ("OK", 0), (
            tmp_path / "repair.log"
        ).read_text()[-3000:]
    finally:
        if conn is not None:
            await conn.close()
        await sim.stop()
