"""End to end on Kraken: the daemon process against the Kraken personality and
a real TimescaleDB, with a lookback (1 day of 1m bars) deeper than the 720
entries Kraken serves. Backfill and the live v2 stream fill the reachable
window; one heal cycle confirms the unreachable older range empty after a
single attempt, and a second heal cycle asks nothing more about it.

Beside two crypto pairs (24/7) it carries a FUTURES series on the CME_Equity
calendar, at a pinned instant (tests.daemon_proc.pinned) 40 s after the CME
daily halt (16:00-17:00 Chicago) ended: the reachable window holds the halt,
whose minutes are no hole, and the first bar after it comes by the stream."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.domain import Candle, SeriesKey, Timeframe
from candled.venues.kraken import LIMITS
from candled_sim.kraken import KrakenPersonality, OhlcRequest
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    at,
    compare_with_truth,
    log_events,
    pinned,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    stored_candle,
    tail,
    venue_toml,
    wait_for_event,
    wait_until,
    write_config,
)

CRYPTO = ["AAA/USD", "BBB/USD"]
FUTURE = "ES/USD"  # FUTURES, CME_Equity: Sunday 17:00 to Friday 16:00 Chicago, halted 16:00-17:00
SYMBOLS = [*CRYPTO, FUTURE]
M1 = Timeframe.parse("1m")
HORIZON = LIMITS.history_horizon_bars or 0  # closed bars Kraken serves
# Tuesday 24 November 2026, 17:00:40 Chicago (CST): the daily halt ended 40 s ago.
INSTANT = at("2026-11-24T23:00:40Z")
HALT = (at("2026-11-24T22:00:00Z"), at("2026-11-24T23:00:00Z"))


def _horizon(request: OhlcRequest) -> datetime:
    """The oldest closed bar Kraken served at the time of `request`."""
    return M1.add(M1.floor(request.at), -HORIZON)


def _asked_from(request: OhlcRequest) -> datetime:
    """The first bar a request asked for (`since` is exclusive)."""
    assert request.since is not None
    return datetime.fromtimestamp(request.since + 1, UTC)


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


def _values(c: Candle) -> tuple[float, ...]:
    return c.open, c.high, c.low, c.close, c.volume


def _fetched_after_close(log: list[OhlcRequest], symbol: str, ts: datetime) -> bool:
    """Whether an OHLC request answered after the bar `ts` closed held it."""
    return any(r.symbol == symbol and r.at >= M1.close_time(ts)
               and (r.since is None or _asked_from(r) <= ts) for r in log)  # fmt: skip


@pytest.mark.parametrize("instant", [pytest.param(INSTANT, id="cme-reopened-after-halt")])
@pytest.mark.timeout(240)
async def test_kraken_horizon_backfill_stream_and_heal(
    instant: datetime, tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = pinned(instant, monkeypatch)
    scenario = {
        "seed": 23,
        "symbols": [
            *({"symbol": s, "listed": "-30d"} for s in CRYPTO),
            {"symbol": FUTURE, "listed": "-30d", "profile": "FUTURES", "calendar": "CME_Equity"},
        ],
        "ws": {"update_interval": "1s"},
    }
    sim = SimExchange(parse_scenario(scenario, now()), clock=now, protocol="kraken")
    assert isinstance(sim.personality, KrakenPersonality)
    log = sim.personality.ohlc_requests
    future_sim = SeriesKey("sim", FUTURE, "1m")
    # The halt: no bar in the truth, a bar on either side.
    assert not list(sim.truth.opens(future_sim, *HALT))
    assert sim.truth.exists(future_sim, M1.add(HALT[0], -1))
    assert sim.truth.exists(future_sim, HALT[1])
    _, port = await sim.start("127.0.0.1", 0)
    try:
        body = venue_toml("kraken", port, kind="kraken", rate_capacity=60)
        body += series_toml("kraken", CRYPTO, ["1m"], lookback='"1d"')
        body += series_toml("kraken", [FUTURE], ["1m"], lookback='"1d"', profile='"FUTURES"',
                            calendar='"CME_Equity"')  # fmt: skip
        config = write_config(tmp_path, body)
        daemon_log = tmp_path / "daemon.log"
        started = now()
        conn = await asyncpg.connect(tsdb_dsn)
        try:
            async with running_daemon(config, tsdb_dsn, daemon_log) as proc:
                # The daemon's own first heal cycle (after its orchestrated
                # backfill) confirms the unreachable range of each series empty.
                cycle = await wait_for_event(daemon_log, "heal cycle done", proc, within=120)
                assert cycle["confirmed_empty"] == len(SYMBOLS), tail(daemon_log)
                streamed: dict[str, datetime] = {}

                async def a_streamed_bar_each() -> bool:
                    # Of each pair, a bar that closed after the start, stored
                    # with its final values, that no REST answer after its
                    # close held: it came by the stream.
                    assert proc.returncode is None, tail(daemon_log)
                    for symbol in SYMBOLS:
                        key, sim_key = (
                            SeriesKey("kraken", symbol, "1m"),
                            SeriesKey("sim", symbol, "1m"),
                        )
                        for ts in sim.truth.opens(sim_key, M1.floor(started), M1.floor(now())):
                            if symbol in streamed:
                                break
                            stored = await stored_candle(conn, key, ts)
                            final = sim.truth.bar(sim_key, ts)
                            if (stored is not None and _values(stored) == _values(final)
                                    and not _fetched_after_close(log, symbol, ts)):  # fmt: skip
                                streamed[symbol] = ts
                    return len(streamed) == len(SYMBOLS)

                await wait_until(a_streamed_bar_each, within=120)
                stopped = now()
                assert await stop(proc) == 0
            assert log, "the daemon never asked for history"
            assert sim.counters.ws_connections >= 1 and sim.counters.frames_sent > 0
            # The first bar after the halt came by the stream.
            assert streamed[FUTURE] == HALT[1], streamed
            # The daemon's calendar has the halt too: no bar where it says closed.
            outside = [e for e in log_events(daemon_log) if "calendar says" in e.get("event", "")]
            assert not outside, outside
            # The reachable window at backfill time: the first request's horizon.
            reachable_from = _horizon(log[0])
            lookback_start = M1.floor(started - timedelta(days=1))
            assert reachable_from - lookback_start > timedelta(hours=12)  # deeper than Kraken goes
            assert reachable_from < HALT[0]  # the halt lies in the reachable window

            await repair_pass(config, tsdb_dsn, tmp_path)  # the heal cycle it would run next
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

            # A second heal cycle asks nothing more about the unreachable range:
            # only recent history, if anything.
            asked = len(log)
            await repair_pass(config, tsdb_dsn, tmp_path)
            assert all(_asked_from(r) >= reachable_from for r in log[asked:])
            for key, before in first_heal.items():
                assert await _unreachable_attempts(conn, key, reachable_from) == before

            halt_bars = M1.count_bars(*HALT)
            for symbol in SYMBOLS:
                key = SeriesKey("kraken", symbol, "1m")
                diff = await compare_with_truth(
                    conn, sim.truth, key, reachable_from, M1.floor(stopped), sparse=LIMITS.sparse
                )
                assert diff.equal, f"{key}: {diff}"
                assert diff.expected >= HORIZON - (halt_bars if symbol == FUTURE else 0)
                status = await conn.fetchrow(
                    "SELECT status, missing_bars FROM series_status"
                    " WHERE venue = 'kraken' AND symbol = $1",
                    symbol,
                )  # fmt: skip
                assert status is not None
                assert (status["status"], status["missing_bars"]) == ("OK", 0), tail(
                    tmp_path / "repair.log", 2000
                )
            # The halt is no hole: nothing stored, nothing asked for, nothing confirmed empty.
            key = SeriesKey("kraken", FUTURE, "1m")
            assert await conn.fetchval(
                "SELECT count(*) FROM candles WHERE symbol = $1 AND ts >= $2 AND ts < $3",
                FUTURE, *HALT,
            ) == 0  # fmt: skip
            attempts, ranges = await _unreachable_attempts(conn, key, M1.floor(stopped))
            assert not [a for a in [*attempts, *ranges]
                        if a["start_ts"] < HALT[1] and a["end_ts"] > HALT[0]]  # fmt: skip
        finally:
            await conn.close()
        # Every request the daemon sent stayed inside what Kraken serves.
        assert all(_asked_from(r) >= M1.add(_horizon(r), -1) for r in log)
        assert sim.counters.sent_429 == 0
        # After that heal cycle every series is OK: it confirmed the rest empty.
        assert cycle["statuses"] == {"OK": len(SYMBOLS)}, cycle
    finally:
        await sim.stop()
