"""End to end on the Alpaca personality: EQUITY series (XNYS) over a range
holding NYSE's Thanksgiving holiday and the early close the day after, with
illiquid bars (no bar at all on Alpaca), end OK after backfill, the live
stream and one heal cycle, the illiquid bars confirmed empty rather than
repaired forever.

It runs at pinned market instants (tests.daemon_proc.pinned), so it proves
the same at every hour:
- inside a session (the early-close Friday, 40 minutes before its 13:00 New
  York close): the live minute stream carries bars, corrected bars included;
- after a close whose last 15m bars had no trades: the tail is confirmed
  empty and the series is OK (it used to be STALE)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.domain import SeriesKey, Timeframe
from candled.venues.alpaca import parse_time
from candled_sim import sessions
from candled_sim.alpaca import SIM_KEY, SIM_SECRET
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    SimRequest,
    at,
    compare_with_truth,
    log_events,
    pinned,
    record_requests,
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

SYMBOL = "EQTY"
M1, M15 = Timeframe.parse("1m"), Timeframe.parse("15m")
MINUTES = SeriesKey("alpaca", SYMBOL, "1m")  # streamed
QUARTERS = SeriesKey("alpaca", SYMBOL, "15m")  # Alpaca streams minute bars only: polled
# Six days from either instant hold a session before Thanksgiving (no session)
# and, from the Monday, the early close of the Friday after it (13:00 New York).
LOOKBACK = timedelta(days=6)
HOLIDAY = date(2026, 11, 26)
EARLY_CLOSE = at("2026-11-27T18:00:00Z")
SCENARIO = {"seed": 21, "symbols": [{"symbol": SYMBOL, "listed": "-500d", "profile": "EQUITY",
                                     "calendar": "XNYS", "illiquid": 0.1}]}  # fmt: skip
# With seed 21 the 15m bars from 20:15 to the 21:00 close on Monday 30 November
# have no trades: no bar at all on Alpaca.
UNTRADED_TAIL = (at("2026-11-30T20:15:00Z"), at("2026-11-30T21:00:00Z"))


@dataclass(frozen=True)
class Case:
    instant: datetime
    in_session: bool  # the stream carries bars while the daemon runs


CASES = [
    pytest.param(Case(at("2026-11-27T17:20:40Z"), in_session=True), id="early-close-day-session"),
    pytest.param(
        Case(at("2026-11-30T21:40:30Z"), in_session=False), id="after-close-untraded-tail"
    ),
]


def _minute_window(request: SimRequest) -> tuple[datetime, datetime] | None:
    """The minutes [first, end) a REST bars request asked for (both labels
    inclusive); None for other requests."""
    if request.params.get("timeframe") != "1Min":
        return None
    first, last = parse_time(request.params["start"]), parse_time(request.params["end"])
    return first, M1.next(last)


def _fetched_after_close(requests: list[SimRequest], ts: datetime) -> bool:
    """Whether a REST request asked for the minute `ts` after it had closed."""
    windows = [(w, r) for r in requests if (w := _minute_window(r)) is not None]
    return any(w[0] <= ts < w[1] and r.at >= M1.close_time(ts) for w, r in windows)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.timeout(240)
async def test_equity_series_at_a_pinned_instant_ends_ok(
    case: Case, tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = pinned(case.instant, monkeypatch)
    sim = SimExchange(parse_scenario(SCENARIO, now()), clock=now, protocol="alpaca")
    requests = record_requests(sim, now)
    sim_minutes = SeriesKey("sim", SYMBOL, "1m")
    sim_quarters = SeriesKey("sim", SYMBOL, "15m")
    if not case.in_session:
        # What this case is about: the session's last 15m bars have no trades.
        tail_bars = list(M15.bars(*UNTRADED_TAIL))
        assert tail_bars and not any(sim.truth.traded(sim_quarters, ts) for ts in tail_bars)
    # Credentials come from the environment, as a systemd EnvironmentFile would set them.
    monkeypatch.setenv("CANDLED_TEST_ALPACA_KEY", SIM_KEY)
    monkeypatch.setenv("CANDLED_TEST_ALPACA_SECRET", SIM_SECRET)
    _, port = await sim.start("127.0.0.1", 0)
    conn: asyncpg.Connection | None = None
    try:
        body = venue_toml(
            "alpaca", port, kind="alpaca", rate_capacity=200,
            api_key_env='"CANDLED_TEST_ALPACA_KEY"', api_secret_env='"CANDLED_TEST_ALPACA_SECRET"',
            options='{ feed = "sip" }',
        )  # fmt: skip
        equity = {"profile": '"EQUITY"', "calendar": '"XNYS"'}
        body += series_toml("alpaca", [SYMBOL], ["15m", "1m"], lookback=f'"{LOOKBACK.days}d"',
                            **equity)  # fmt: skip
        config = write_config(tmp_path, body)
        log = tmp_path / "daemon.log"
        started = now()
        async with running_daemon(config, tsdb_dsn, log) as proc:
            conn = await asyncpg.connect(tsdb_dsn)
            # The daemon's own first heal cycle, after its orchestrated backfill:
            # both series OK (the untraded tail confirmed empty, not STALE).
            cycle = await wait_for_event(log, "heal cycle done", proc, within=120)
            assert cycle["statuses"] == {"OK": 2}, tail(log)
            streamed: datetime | None = None
            if case.in_session:
                # A minute that closed after the start came by the stream (no
                # REST request asked for it after its close), stored with its
                # final values (a corrected bar's "u" follows 30 s after its "b").
                async def a_streamed_minute() -> datetime | None:
                    assert proc.returncode is None, tail(log)
                    assert now() < EARLY_CLOSE, "the session closed before a bar was streamed"
                    for ts in M1.bars(M1.floor(started), M1.floor(now())):
                        stored = await stored_candle(conn, MINUTES, ts)
                        final = sim.truth.bar(sim_minutes, ts)
                        if (
                            stored is not None
                            and (stored.open, stored.high, stored.low, stored.close,
                                 stored.volume)
                            == (final.open, final.high, final.low, final.close, final.volume)
                            and not _fetched_after_close(requests, ts)
                        ):  # fmt: skip
                            return ts
                    return None

                streamed = await wait_until(a_streamed_minute, within=120)
            assert proc.returncode is None, tail(log)
            stopped = now()
            assert await stop(proc) == 0
        assert sim.counters.ws_connections >= 1, "the daemon never opened the stream"
        if case.in_session:
            assert sim.counters.frames_sent >= 1
        else:
            assert sim.counters.frames_sent == 0  # the market is closed: nothing to stream
        assert sim.counters.sent_429 == 0
        await repair_pass(config, tsdb_dsn, tmp_path)
    finally:
        await sim.stop()

    logs = log.read_text() + (tmp_path / "repair.log").read_text()
    assert SIM_SECRET not in logs, "the API secret was logged"
    assert not [e for e in log_events(log) if e.get("level") in ("error", "critical")], tail(log)
    assert conn is not None
    try:
        for key in (QUARTERS, MINUTES):
            tf = key.tf
            # The daemon took its lookback start a moment after `started`.
            lo = tf.add(tf.ceil(started - LOOKBACK), 1)
            hi = tf.floor(stopped)
            if key == MINUTES and streamed is not None:
                # Bars streamed after the one waited for may still lack their
                # correction (the stop came first): compare up to that one.
                hi = M1.next(streamed)
            diff = await compare_with_truth(conn, sim.truth, key, lo, hi, sparse=True)
            assert diff.equal, f"{key}: {diff}"
            status = await conn.fetchrow(
                """SELECT status, missing_bars, confirmed_empty_bars, last_ts FROM series_status
                   WHERE venue = 'alpaca' AND symbol = $1 AND timeframe = $2""",
                SYMBOL, key.timeframe,
            )  # fmt: skip
            assert status is not None
            assert (status["status"], status["missing_bars"]) == ("OK", 0), f"{key}: {dict(status)}"
            # The illiquid bars are confirmed empty, not holes to repair forever.
            assert status["confirmed_empty_bars"] > 0, f"{key}: {dict(status)}"
            if not case.in_session and key == QUARTERS:
                # The newest bar is the last traded one, before the untraded tail.
                assert status["last_ts"] == M15.add(UNTRADED_TAIL[0], -1), dict(status)

        # The daemon's calendar agrees with the venue's sessions (the
        # simulator's hand-checked table, not daemon.calendars): it never
        # found bars where it thinks the market is closed, and every range it
        # confirmed empty lies inside a session (untraded bars, not a holiday
        # it missed).
        assert not [e for e in log_events(log) if "calendar says the market is closed"
                    in str(e.get("event"))], tail(log)  # fmt: skip
        for key in (QUARTERS, MINUTES):
            confirmed = await conn.fetch(
                """SELECT e.start_ts, e.end_ts FROM empty_ranges e JOIN series s ON s.id = e.series_id
                   WHERE s.symbol = $1 AND s.timeframe = $2 AND e.confirmed_at IS NOT NULL""",
                SYMBOL, key.timeframe,
            )  # fmt: skip
            assert confirmed, key
            for r in confirmed:
                bars = list(key.tf.bars(r["start_ts"], r["end_ts"]))
                closed = [ts for ts in bars if not sessions.has_bar("XNYS", key.tf, ts)]
                assert not closed, (
                    f"{key}: confirmed empty while the market was closed: {closed[:3]}"
                )

        # The range holds the holiday (no bar) and, once it is past, the early
        # close (none after it).
        for key in (QUARTERS, MINUTES):
            stored = [r["ts"] for r in await conn.fetch(
                "SELECT ts FROM candles WHERE venue = 'alpaca' AND symbol = $1"
                " AND timeframe = $2", SYMBOL, key.timeframe,
            )]  # fmt: skip
            assert min(stored) < datetime.combine(HOLIDAY, datetime.min.time(), UTC), key
            assert not any(ts.date() == HOLIDAY for ts in stored), key
            early_day = [ts for ts in stored if ts.date() == EARLY_CLOSE.date()]
            assert early_day and max(early_day) < EARLY_CLOSE, key
            if started > EARLY_CLOSE:
                assert max(early_day) >= EARLY_CLOSE - timedelta(minutes=30), key
    finally:
        await conn.close()
