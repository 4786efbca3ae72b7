"""End to end on Coinbase Exchange: the daemon process against the simulator's
Coinbase personality and a real TimescaleDB. Backfill, live bars by polling
(Coinbase has no candle stream), one heal cycle; then the store equals the
sparse truth, and the minutes without trades are confirmed empty after one
empty answer instead of being asked for again every cycle."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from daemon import clock
from daemon.domain import SeriesKey
from daemon.sim.scenario import parse_scenario
from daemon.sim.server import SimExchange
from tests.daemon_proc import (
    compare_with_truth,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)

BTC = SeriesKey("coinbase", "BTC-USD", "1m")
ETH = SeriesKey("coinbase", "ETH-USD", "1m")  # illiquid: about one minute in 20 has no trade
LOOKBACK = timedelta(hours=3)
SCENARIO = {
    "seed": 23,
    "symbols": [
        {"symbol": "BTC-USD", "listed": "-2d"},
        {"symbol": "ETH-USD", "listed": "-2d", "illiquid": 0.05},
    ],
}
SETTLE_S = 35  # an audit judges bars up to 30 s (healer.SETTLE) before its start


async def _stored(conn: asyncpg.Connection, key: SeriesKey, ts: datetime) -> bool:
    try:
        found = await conn.fetchval(
            "SELECT 1 FROM candles WHERE venue = $1 AND symbol = $2 AND timeframe = $3"
            " AND ts = $4",
            key.venue, key.symbol, key.timeframe, ts,
        )  # fmt: skip
    except asyncpg.UndefinedTableError:
        return False  # the daemon has not migrated the database yet
    return found is not None


async def _clear_of_the_settle_boundary() -> None:
    """The repair pass audits twice, a few seconds apart; if a bar settles in
    between (at second 30 of a minute), the second audit finds a hole the
    first did not plan. Start it where that cannot happen."""
    while 18 <= clock.now().second < 31:
        await asyncio.sleep(0.5)


@pytest.mark.timeout(180)
async def test_coinbase_store_equals_sparse_truth_and_illiquid_minutes_end_confirmed_empty(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    sim = SimExchange(parse_scenario(SCENARIO, clock.now()), protocol="coinbase")
    _, port = await sim.start("127.0.0.1", 0)
    try:
        # 10 requests a minute is far below Coinbase's 10 a second and above what
        # this run needs (a page per series, a repair window, a poll a minute).
        body = venue_toml("coinbase", port, kind="coinbase", rate_capacity=10,
                          poll_delay='"1s"')  # fmt: skip
        body += series_toml("coinbase", [BTC.symbol, ETH.symbol], ["1m"], lookback='"3h"')
        config = write_config(tmp_path, body)
        started = clock.now()
        polled = BTC.tf.floor(started)  # in progress at startup: only a poll fetches it
        conn = await asyncpg.connect(tsdb_dsn)
        try:
            async with running_daemon(config, tsdb_dsn, tmp_path / "daemon.log") as proc:
                await wait_until(lambda: _stored(conn, BTC, polled), within=75)
                assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
                stopped = clock.now()
                assert await stop(proc) == 0
            await _clear_of_the_settle_boundary()
            await repair_pass(config, tsdb_dsn, tmp_path)

            lo = BTC.tf.ceil(started - LOOKBACK + timedelta(seconds=10))
            hi = BTC.tf.floor(stopped - timedelta(seconds=SETTLE_S))
            for key in (BTC, ETH):
                diff = await compare_with_truth(conn, sim.truth, key, lo, hi, sparse=True)
                assert diff.equal, f"{key}: {diff}"
            untraded = [ts for ts in BTC.tf.bars(lo, hi) if not sim.truth.traded(ETH, ts)]
            assert untraded, "the scenario must leave some ETH-USD minutes without trades"
            assert all(sim.truth.traded(BTC, ts) for ts in BTC.tf.bars(lo, hi))

            statuses = {
                r["symbol"]: r
                for r in await conn.fetch(
                    "SELECT symbol, status, missing_bars, confirmed_empty_bars FROM series_status"
                    " WHERE venue = 'coinbase'"
                )
            }
            assert {s: r["status"] for s, r in statuses.items()} == {
                BTC.symbol: "OK", ETH.symbol: "OK"
            }, (tmp_path / "repair.log").read_text()[-2000:]  # fmt: skip
            assert statuses[ETH.symbol]["missing_bars"] == 0
            assert statuses[ETH.symbol]["confirmed_empty_bars"] >= len(untraded)
            assert statuses[BTC.symbol]["confirmed_empty_bars"] == 0

            # Each untraded minute lies in a range confirmed by one empty answer,
            # and a confirmed range holds no minute with trades.
            ranges = await conn.fetch(
                """SELECT e.start_ts, e.end_ts, e.empty_answers, e.confirmed_at
                   FROM empty_ranges e JOIN series s ON s.id = e.series_id
                   WHERE s.venue = $1 AND s.symbol = $2 AND s.timeframe = $3""",
                ETH.venue, ETH.symbol, ETH.timeframe,
            )  # fmt: skip
            assert ranges and all(r["confirmed_at"] is not None for r in ranges)
            assert all(r["empty_answers"] == 1 for r in ranges)
            covered = {ts for r in ranges for ts in ETH.tf.bars(r["start_ts"], r["end_ts"])}
            assert set(untraded) <= covered
            assert not any(sim.truth.traded(ETH, ts) for ts in covered)
            assert sim.counters.sent_429 == 0
        finally:
            await conn.close()
    finally:
        await sim.stop()
