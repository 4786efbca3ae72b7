"""End to end on Coinbase Exchange: the daemon process against the simulator's
Coinbase personality and a real TimescaleDB. Backfill, live bars by polling
(Coinbase has no candle stream), one heal cycle; then the store equals the
sparse truth, and the minutes without trades are confirmed empty after one
empty answer instead of being asked for again every cycle.

It runs at a pinned instant (tests.daemon_proc.pinned): a Saturday, when
crypto trades on and every minute is expected (and polled) as on a weekday."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.domain import SeriesKey
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    SimRequest,
    at,
    compare_with_truth,
    pinned,
    record_requests,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    tail,
    venue_toml,
    wait_for_event,
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
TF = BTC.tf
POLL_DELAY = timedelta(seconds=1)
# Saturday, 40 s into a minute: the catch-up (a request a series) is done long
# before the bar in progress closes, so that bar comes by the poll alone.
INSTANT = at("2026-11-28T09:15:40Z")


def _window(request: SimRequest) -> tuple[SeriesKey, datetime, datetime]:
    """The series and bars [first, end) a candles request asked for (`end`
    is half a bar past the last one wanted, as the codec writes it)."""
    symbol = request.path.split("/")[2]
    first = datetime.fromisoformat(request.params["start"])
    last = TF.floor(datetime.fromisoformat(request.params["end"]))
    return SeriesKey("coinbase", symbol, BTC.timeframe), first, TF.next(last)


async def _stored(
    conn: asyncpg.Connection, key: SeriesKey, start: datetime, end: datetime
) -> list[datetime]:
    """Open times of the stored bars of `key` in [start, end)."""
    try:
        rows = await conn.fetch(
            "SELECT ts FROM candles WHERE venue = $1 AND symbol = $2 AND timeframe = $3"
            " AND ts >= $4 AND ts < $5 ORDER BY ts",
            key.venue, key.symbol, key.timeframe, start, end,
        )  # fmt: skip
    except asyncpg.UndefinedTableError:
        return []  # the daemon has not migrated the database yet
    return [r["ts"] for r in rows]


@pytest.mark.parametrize("instant", [pytest.param(INSTANT, id="saturday")])
@pytest.mark.timeout(180)
async def test_coinbase_store_equals_sparse_truth_and_illiquid_minutes_end_confirmed_empty(
    instant: datetime, tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = pinned(instant, monkeypatch)
    sim = SimExchange(parse_scenario(SCENARIO, now()), clock=now, protocol="coinbase")
    requests = record_requests(sim, now)
    _, port = await sim.start("127.0.0.1", 0)
    try:
        # 10 requests a minute is far below Coinbase's 10 a second and above what
        # this run needs (a page per series, a repair window, a poll a minute).
        body = venue_toml("coinbase", port, kind="coinbase", rate_capacity=10,
                          poll_delay=f'"{POLL_DELAY.seconds}s"')  # fmt: skip
        body += series_toml("coinbase", [BTC.symbol, ETH.symbol], ["1m"], lookback='"3h"')
        config = write_config(tmp_path, body)
        log = tmp_path / "daemon.log"
        started = now()
        conn = await asyncpg.connect(tsdb_dsn)
        try:
            async with running_daemon(config, tsdb_dsn, log) as proc:

                def polls() -> list[tuple[SeriesKey, datetime, datetime, SimRequest]]:
                    # Requests for bars none of which had closed when the daemon
                    # started: the catch-up asks only for closed ones (up to its
                    # start), the daemon's first heal cycle for settled ones.
                    return [(*w, r) for r in requests if r.path.endswith("/candles")
                            if (w := _window(r))[1] >= TF.floor(started)]  # fmt: skip

                async def polled_bars_stored() -> bool:
                    # One bar of each series that came by a poll is stored (for
                    # ETH-USD, a minute without trades is polled but never stored).
                    assert proc.returncode is None, tail(log)
                    found = set()
                    for key, first, end, _ in polls():
                        if key not in found and await _stored(conn, key, first, end):
                            found.add(key)
                    return found == {BTC, ETH}

                # The daemon's own first heal cycle (after its orchestrated
                # backfill): both OK, ETH-USD's untraded minutes confirmed empty.
                cycle = await wait_for_event(log, "heal cycle done", proc, within=120)
                assert cycle["statuses"] == {"OK": 2}, tail(log)
                await wait_until(polled_bars_stored, within=120)
                stopped = now()
                assert await stop(proc) == 0
            polled = polls()
            assert sim.counters.sent_429 == 0
            assert set(sim.counters.requests_by_status) == {200}, sim.counters.requests_by_status

            # Every bar from the first polled one on that closed while the daemon
            # ran (and its poll was due) was asked for only after it closed, by
            # a poll, and is stored; minutes without trades were polled too.
            due = TF.floor(stopped - POLL_DELAY)
            for key in (BTC, ETH):
                mine = [(first, end, r) for k, first, end, r in polled if k == key]
                first_polled = min(first for first, _, _ in mine)
                assert first_polled <= TF.next(TF.floor(started)), f"{key}: the poll started late"
                for ts in TF.bars(first_polled, due):
                    asked = [r for first, end, r in mine if first <= ts < end]
                    assert asked and all(r.at >= TF.close_time(ts) for r in asked), (key, ts)
                truth = sim.truth.candles(key, first_polled, due, due, sparse=True)
                assert truth, f"{key}: no bar with trades closed during the run"
                assert set(await _stored(conn, key, first_polled, due)) == {c.ts for c in truth}

            await repair_pass(config, tsdb_dsn, tmp_path)

            # The daemon took its lookback start a moment after `started`.
            lo, hi = TF.next(started - LOOKBACK), due
            for key in (BTC, ETH):
                diff = await compare_with_truth(conn, sim.truth, key, lo, hi, sparse=True)
                assert diff.equal, f"{key}: {diff}"
            untraded = [ts for ts in TF.bars(lo, hi) if not sim.truth.traded(ETH, ts)]
            assert untraded, "the scenario must leave some ETH-USD minutes without trades"
            assert all(sim.truth.traded(BTC, ts) for ts in TF.bars(lo, hi))

            statuses = {
                r["symbol"]: r
                for r in await conn.fetch(
                    "SELECT symbol, status, missing_bars, confirmed_empty_bars FROM series_status"
                    " WHERE venue = 'coinbase'"
                )
            }
            assert {s: (r["status"], r["missing_bars"]) for s, r in statuses.items()} == {
                BTC.symbol: ("OK", 0), ETH.symbol: ("OK", 0)
            }, (tmp_path / "repair.log").read_text()[-2000:]  # fmt: skip
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
        finally:
            await conn.close()
    finally:
        await sim.stop()
