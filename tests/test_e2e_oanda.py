"""End to end on the OANDA personality: the daemon process backfills a FOREX
series whose lookback holds a whole FX weekend, polls its live bars (OANDA has
no candle stream), and after one heal cycle the store equals the simulator's
truth and the series is OK: the closed FX market is no hole, and minutes
without a price (no candle on OANDA) are confirmed empty.

It runs at pinned market instants (tests.daemon_proc.pinned), so it proves
the same at every hour: the FX Sunday open (the first bar of the week comes
only by the poll), a minute inside the week, and a Saturday (the polls are
answered with nothing, and that is no hole: the series is OK, not STALE).

And a bar OANDA completes only 40 s after its close (`complete: false` until
a price after its end arrives): the poll asks again until it is complete and
stores it then, never taking it for a bar without a price."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.domain import Candle, SeriesKey
from candled.venues.oanda import parse_time
from candled_sim import SimExchange, Truth, parse_scenario
from candled_sim.oanda import SIM_TOKEN, OandaPersonality
from candled_sim.oanda.wire import as_published
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
    stored_candle,
    tail,
    venue_toml,
    wait_for_event,
    wait_until,
    write_config,
)

KEY = SeriesKey("oanda", "EUR_USD", "1m")
SIM_KEY = SeriesKey("sim", "EUR_USD", "1m")
TF = KEY.tf
# Eight days always hold one whole weekend (Friday 17:00 to Sunday 17:00 New York).
LOOKBACK = timedelta(days=8)
POLL_DELAY = timedelta(seconds=1)
SCENARIO = {
    "seed": 21,
    "symbols": [{"symbol": "EUR_USD", "listed": "-60d", "profile": "FOREX", "illiquid": 0.01}],
}


@dataclass(frozen=True)
class Case:
    instant: datetime
    market_open: bool  # the polls bring bars


# 40 s into a minute: the catch-up (three requests) is done long before the
# bar in progress closes, so that bar comes by the poll alone.
CASES = [
    # Sunday 17:00:40 New York: the market opened 40 s ago; the bar in progress
    # is the week's first, the lookback ends with the weekend.
    pytest.param(Case(at("2026-11-29T22:00:40Z"), market_open=True), id="sunday-open"),
    # Wednesday mid-morning in New York: an ordinary minute of the week.
    pytest.param(Case(at("2026-11-25T14:30:40Z"), market_open=True), id="midweek"),
    # Saturday: closed since Friday 17:00 New York; the polls go on, empty.
    pytest.param(Case(at("2026-11-28T15:00:40Z"), market_open=False), id="saturday-closed"),
]
WEEK_CLOSED = at("2026-11-27T22:00:00Z")  # Friday 17:00 New York, before the Saturday case


class AsPublished:
    """The truth as OANDA publishes it (tick-count volumes), for `compare_with_truth`."""

    def __init__(self, truth: Truth) -> None:
        self._truth = truth

    def candles(
        self, series: SeriesKey, start: datetime, end: datetime, now: datetime, *, sparse: bool
    ) -> list[Candle]:
        bars = self._truth.candles(series, start, end, now, sparse=sparse)
        return [as_published(c) for c in bars]


def _window(request: SimRequest) -> tuple[datetime, datetime]:
    """The bars [first, end) a candles request asked for (`to` is a
    microsecond before the end, as the codec writes it)."""
    return parse_time(request.params["from"]), parse_time(request.params["to"]) + timedelta(
        microseconds=1
    )


def _candle_requests(requests: list[SimRequest]) -> list[SimRequest]:
    return [r for r in requests if r.path.endswith("/candles")]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.timeout(180)
async def test_forex_series_polled_at_a_pinned_instant_ends_ok(
    case: Case, tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instant = case.instant
    now = pinned(instant, monkeypatch)
    sim = SimExchange(parse_scenario(SCENARIO, now()), clock=now, protocol="oanda")
    requests = record_requests(sim, now)
    # An open market's instant is chosen so that its minute has a price: the
    # poll has a bar to fetch.
    prices = sim.truth.candles(SIM_KEY, TF.floor(instant), TF.next(instant), TF.next(instant),
                               sparse=True)  # fmt: skip
    assert bool(prices) == case.market_open
    if instant.weekday() == 6:  # Sunday: the bar in progress is the week's first
        weekend = (TF.floor(instant) - timedelta(hours=47), TF.floor(instant))
        assert not sim.truth.candles(SIM_KEY, *weekend, weekend[1], sparse=False)
    _, port = await sim.start("127.0.0.1", 0)
    conn: asyncpg.Connection | None = None
    try:
        token = tmp_path / "oanda.token"
        token.write_text(SIM_TOKEN + "\n")
        body = venue_toml("oanda", port, kind="oanda", api_key_file=f'"{token}"',
                          poll_delay=f'"{POLL_DELAY.seconds}s"')  # fmt: skip
        body += series_toml("oanda", [KEY.symbol], [KEY.timeframe], profile='"FOREX"',
                            lookback=f'"{LOOKBACK.days}d"')  # fmt: skip
        config = write_config(tmp_path, body)
        log = tmp_path / "daemon.log"
        started = now()
        async with running_daemon(config, tsdb_dsn, log) as proc:
            conn = await asyncpg.connect(tsdb_dsn)

            def polls() -> list[SimRequest]:
                # Requests for bars none of which had closed when the daemon
                # started: the catch-up asks only for closed ones (up to its
                # start), the daemon's first heal cycle for settled ones.
                return [r for r in _candle_requests(requests)
                        if _window(r)[0] >= TF.floor(started)]  # fmt: skip

            async def polled_after_a_close() -> bool:
                # A poll answered after the bars it asked for closed; in an
                # open market, with a bar of them stored.
                assert proc.returncode is None, tail(log)
                for r in polls():
                    first, end = _window(r)
                    if r.at >= end and (not case.market_open or await _stored(conn, first, end)):
                        return True
                return False

            # The daemon's own first heal cycle (after its orchestrated
            # backfill): OK, the weekend being no hole.
            cycle = await wait_for_event(log, "heal cycle done", proc, within=120)
            assert cycle["statuses"] == {"OK": 1}, tail(log)
            await wait_until(polled_after_a_close, within=120)
            stopped = now()
            assert await stop(proc) == 0
        polled = polls()
        # Only what OANDA answers with 200: no bad parameter, no `to` in the
        # future, no missing token, never over the rate limit.
        assert set(sim.counters.requests_by_status) == {200}, sim.counters.requests_by_status

        # Every bar from the first polled one on that closed while the daemon
        # ran (and its poll was due) was asked for only after it closed, by a
        # poll, and is stored.
        first_polled = min(_window(r)[0] for r in polled)
        assert first_polled <= TF.next(TF.floor(started)), "the poll started late"
        due = TF.floor(stopped - POLL_DELAY)
        for ts in TF.bars(first_polled, due):
            asked = [r for r in polled if _window(r)[0] <= ts < _window(r)[1]]
            assert asked and all(r.at >= TF.close_time(ts) for r in asked), (ts, asked)
        truth_bars = sim.truth.candles(SIM_KEY, first_polled, due, due, sparse=True)
        assert bool(truth_bars) == case.market_open, truth_bars
        assert set(await _stored(conn, first_polled, due)) == {c.ts for c in truth_bars}
        if not case.market_open:
            assert not await _stored(conn, WEEK_CLOSED, due)  # nothing since Friday's close

        await repair_pass(config, tsdb_dsn, tmp_path)
        # The daemon took its lookback a moment after `started`.
        lo, hi = TF.next(started - LOOKBACK), due
        diff = await compare_with_truth(conn, AsPublished(sim.truth), KEY, lo, hi, sparse=True)
        assert diff.equal, str(diff)
        # The window held a closed FX weekend: 47 to 48 hours (DST) without a bar.
        assert TF.count_bars(lo, hi) - diff.expected >= 47 * 60
        status = await conn.fetchrow(
            "SELECT status, missing_bars FROM series_status"
            " WHERE venue = 'oanda' AND symbol = $1 AND timeframe = $2",
            KEY.symbol, KEY.timeframe,
        )  # fmt: skip
        assert status is not None and (status["status"], status["missing_bars"]) == ("OK", 0), tail(
            tmp_path / "repair.log"
        )
    finally:
        if conn is not None:
            await conn.close()
        await sim.stop()


async def _stored(conn: asyncpg.Connection, start: datetime, end: datetime) -> list[datetime]:
    """Open times of the stored bars in [start, end)."""
    try:
        rows = await conn.fetch(
            "SELECT ts FROM candles WHERE venue = $1 AND symbol = $2 AND timeframe = $3"
            " AND ts >= $4 AND ts < $5 ORDER BY ts",
            KEY.venue, KEY.symbol, KEY.timeframe, start, end,
        )  # fmt: skip
    except asyncpg.UndefinedTableError:
        return []  # not migrated yet
    return [r["ts"] for r in rows]


LATE = timedelta(seconds=40)  # OANDA completes each candle this long after its close


@pytest.mark.timeout(240)
async def test_a_bar_complete_only_40_s_after_its_close_is_stored_not_confirmed_empty(
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll 1 s after the close finds the bar `complete: false`; it is
    asked for again until OANDA completes it, 40 s after the close, and stored
    then (not 15 minutes later by the heal cycle, nor never: OANDA is sparse,
    and an answer without the bar would have confirmed it empty)."""
    # A Wednesday, inside the FX week; 14:29 closed 25 s ago, and OANDA will
    # complete it only 15 s after the daemon started.
    instant = at("2026-11-25T14:30:25Z")
    now = pinned(instant, monkeypatch)
    sim = SimExchange(parse_scenario(SCENARIO, now()), clock=now, protocol="oanda")
    assert isinstance(sim.personality, OandaPersonality)
    sim.personality.settle = LATE
    requests = record_requests(sim, now)
    caught_up = TF.floor(instant) - timedelta(minutes=1)  # the catch-up's newest bar
    assert sim.truth.traded(SIM_KEY, caught_up)
    _, port = await sim.start("127.0.0.1", 0)
    conn: asyncpg.Connection | None = None
    try:
        token = tmp_path / "oanda.token"
        token.write_text(SIM_TOKEN + "\n")
        body = venue_toml("oanda", port, kind="oanda", api_key_file=f'"{token}"',
                          poll_delay=f'"{POLL_DELAY.seconds}s"')  # fmt: skip
        body += series_toml("oanda", [KEY.symbol], [KEY.timeframe], profile='"FOREX"',
                            lookback='"1d"')  # fmt: skip
        config = write_config(tmp_path, body)
        log = tmp_path / "daemon.log"
        async with running_daemon(config, tsdb_dsn, log) as proc:
            conn = await asyncpg.connect(tsdb_dsn)
            cycle = await wait_for_event(log, "heal cycle done", proc, within=120)
            assert cycle["statuses"] == {"OK": 1}, tail(log)
            # The first bar with a price (OANDA publishes a candle) that closes
            # a few seconds from now: its poll is still to come.
            bar = TF.floor(now() + timedelta(seconds=5))
            while not sim.truth.traded(SIM_KEY, bar):
                bar = TF.next(bar)
            close = TF.close_time(bar)

            async def stored_at() -> datetime | None:
                assert proc.returncode is None, tail(log)
                assert conn is not None
                return now() if await stored_candle(conn, KEY, bar) else None

            arrived = await wait_until(
                stored_at, within=(close + LATE - now()).total_seconds() + 30
            )
            assert await stop(proc) == 0

        # Stored as OANDA publishes it, once complete, by the poll asking again
        # every few seconds (not by the next heal cycle, minutes later).
        assert close + LATE <= arrived <= close + LATE + timedelta(seconds=30), arrived - close
        got = await stored_candle(conn, KEY, bar)
        want = as_published(sim.truth.bar(SIM_KEY, bar))
        assert got is not None and _values(got) == _values(want)
        asked = [r for r in _candle_requests(requests) if _window(r)[0] <= bar < _window(r)[1]]
        assert all(r.at >= close for r in asked)  # never before its close
        unfinished = [r for r in asked if r.at < close + LATE]
        assert len(unfinished) >= 2, asked  # asked while not complete, and again
        assert set(sim.counters.requests_by_status) == {200}, sim.counters.requests_by_status
        # Nothing about the bars was taken for "no bar": no empty answer, no confirmation.
        empty = await conn.fetch(
            "SELECT e.start_ts, e.end_ts FROM empty_ranges e JOIN series s ON s.id = e.series_id"
            " WHERE s.venue = 'oanda' AND e.end_ts > $1",
            caught_up,
        )  # fmt: skip
        assert not empty, empty
        # The startup catch-up's newest bar, unfinished when it was asked for
        # (unless the daemon took 15 s to start), was asked for again and stored.
        got = await stored_candle(conn, KEY, caught_up)
        want = as_published(sim.truth.bar(SIM_KEY, caught_up))
        assert got is not None and _values(got) == _values(want)
    finally:
        if conn is not None:
            await conn.close()
        await sim.stop()


def _values(c: Candle) -> tuple[float, ...]:
    return (c.open, c.high, c.low, c.close, c.volume)
