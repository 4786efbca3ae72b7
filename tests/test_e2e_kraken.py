"""End to end on Kraken: the daemon process against the Kraken personality and
a real TimescaleDB, with a lookback (1 day of 1m bars) deeper than the 720
entries Kraken serves. Backfill and the live v2 stream fill the reachable
window; one heal cycle confirms the unreachable older range empty after a
single attempt, and a second heal cycle asks nothing more about it."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from daemon import clock
from daemon.domain import SeriesKey, Timeframe
from daemon.sim.kraken import KrakenPersonality, OhlcRequest
from daemon.sim.scenario import parse_scenario
from daemon.sim.server import SimExchange
from daemon.venues.kraken import LIMITS
from tests.daemon_proc import (
    compare_with_truth,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)

SYMBOLS = ["AAA/USD", "BBB/USD"]
M1 = Timeframe.parse("1m")
HORIZON = LIMITS.history_horizon_bars or 0  # closed bars Kraken serves
MIN_RUN_S = 20.0  # backfill, stream, the daemon's own first heal cycle


def _horizon(request: OhlcRequest) -> datetime:
    """The oldest closed bar Kraken served at the time of `request`."""
    return M1.add(M1.floor(request.at), -HORIZON)


def _asked_from(request: OhlcRequest) -> datetime:
    """The first bar a request asked for (`since` is exclusive)."""
    assert request.since is not None
    return datetime.fromtimestamp(request.since + 1, UTC)


def _run_s(started: datetime) -> float:
    """Long enough for a bar to close during the run (and 5 s more for it to arrive)."""
    to_boundary = (M1.next(started) - started).total_seconds()
    return max(MIN_RUN_S, to_boundary + 5.0)


async def _outside_seconds(low: int, high: int) -> None:
    """Wait while the second of the minute lies in [low, high)."""
    while low <= clock.now().second < high:
        await asyncio.sleep(0.5)


async def _unreachable_attempts(
    conn: asyncpg.Connection, key: SeriesKey, before: datetime
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Repair attempts and empty ranges of the series wholly older than `before`."""
    series_id = await conn.fetchval(
        "SELECT id FROM series WHERE venue = $1 AND symbol = $2 AND timeframe = $3",
        key.venue, key.symbol, key.timeframe,
    )  # fmt: skip
    attempts = await conn.fetch(
        """SELECT start_ts, end_ts, candles, outcome FROM repair_attempts
           WHERE series_id = $1 AND end_ts <= $2 ORDER BY start_ts""",
        series_id, before,
    )  # fmt: skip
    ranges = await conn.fetch(
        """SELECT start_ts, end_ts, empty_answers, confirmed_at FROM empty_ranges
           WHERE series_id = $1 AND end_ts <= $2 ORDER BY start_ts""",
        series_id, before,
    )  # fmt: skip
    return attempts, ranges


@pytest.mark.timeout(240)
async def test_kraken_horizon_backfill_stream_and_heal(tsdb_dsn: str, tmp_path: Path) -> None:
    scenario = {
        "seed": 23,
        "symbols": [{"symbol": s, "listed": "-30d"} for s in SYMBOLS],
        "ws": {"update_interval": "1s"},
    }
    sim = SimExchange(parse_scenario(scenario, clock.now()), protocol="kraken")
    assert isinstance(sim.personality, KrakenPersonality)
    log = sim.personality.ohlc_requests
    _, port = await sim.start("127.0.0.1", 0)
    try:
        body = venue_toml("kraken", port, kind="kraken", rate_capacity=60)
        body += series_toml("kraken", SYMBOLS, ["1m"], lookback='"1d"')
        config = write_config(tmp_path, body)
        started = clock.now()
        async with running_daemon(config, tsdb_dsn, tmp_path / "daemon.log") as proc:
            await asyncio.sleep(_run_s(started))
            assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
            stopped = clock.now()
            assert await stop(proc) == 0
        assert log, "the daemon never asked for history"
        assert sim.counters.ws_connections >= 1 and sim.counters.frames_sent > 0
        # The reachable window at backfill time: the first request's horizon.
        reachable_from = _horizon(log[0])
        lookback_start = M1.floor(started - timedelta(days=1))
        assert reachable_from - lookback_start > timedelta(hours=12)  # deeper than Kraken goes

        await repair_pass(config, tsdb_dsn, tmp_path)  # the heal cycle the daemon would run next
        conn = await asyncpg.connect(tsdb_dsn)
        try:
            first_heal = {}
            for symbol in SYMBOLS:
                key = SeriesKey("kraken", symbol, "1m")
                attempts, ranges = await _unreachable_attempts(conn, key, reachable_from)
                first_heal[key] = (attempts, ranges)
                # The unreachable range: confirmed empty after exactly one empty attempt.
                assert ranges, f"{key}: unreachable range not recorded"
                assert all(r["confirmed_at"] is not None and r["empty_answers"] == 1
                           for r in ranges), ranges  # fmt: skip
                assert [(a["start_ts"], a["end_ts"]) for a in attempts] == [
                    (r["start_ts"], r["end_ts"]) for r in ranges
                ]  # one attempt per range
                assert all(a["outcome"] == "empty" and a["candles"] == 0 for a in attempts)
                covered = sorted((r["start_ts"], r["end_ts"]) for r in ranges)
                assert covered[-1][1] == reachable_from
                assert covered[0][0] <= lookback_start + timedelta(minutes=5)
                assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
                stored_before = await conn.fetchval(
                    "SELECT count(*) FROM candles WHERE symbol = $1 AND ts < $2",
                    symbol, reachable_from,
                )  # fmt: skip
                assert stored_before == 0

            # A second heal cycle, clear of a minute boundary in its audit (which
            # judges bars up to 30 s ago, so a bar becomes due at second 30):
            # it can end with nothing missing.
            await _outside_seconds(24, 32)
            asked = len(log)
            await repair_pass(config, tsdb_dsn, tmp_path)
            # Nothing about the unreachable range: only recent history, if anything.
            assert all(_asked_from(r) >= reachable_from for r in log[asked:])
            for key, before in first_heal.items():
                assert await _unreachable_attempts(conn, key, reachable_from) == before

            for symbol in SYMBOLS:
                key = SeriesKey("kraken", symbol, "1m")
                diff = await compare_with_truth(
                    conn, sim.truth, key, reachable_from, M1.floor(stopped), sparse=LIMITS.sparse
                )
                assert diff.equal, f"{key}: {diff}"
                assert diff.expected >= HORIZON
                status = await conn.fetchval(
                    "SELECT status FROM series_status WHERE venue = 'kraken' AND symbol = $1",
                    symbol,
                )
                assert status == "OK", (tmp_path / "repair.log").read_text()[-2000:]
        finally:
            await conn.close()
        # Every request the daemon sent stayed inside what Kraken serves.
        assert all(_asked_from(r) >= M1.add(_horizon(r), -1) for r in log)
        assert sim.counters.sent_429 == 0
    finally:
        await sim.stop()
