"""OANDA candles that are not complete yet, against the simulator's OANDA
personality with a settling delay (`OandaPersonality.settle`): a closed candle
stays `complete: false` until a price after its end arrives (seconds, at quiet
hours tens of seconds: hootnot/oanda-api-v20#155), and a `to` past OANDA's
clock is refused (hootnot/oanda-api-v20#144).

- the poller asks again for a bar OANDA has not completed, until it arrives,
  and never moves its cursor past it; one still unfinished at the venue's
  settling time is handed on as a hole;
- a clock ahead of OANDA's: catch-up and polls get no 400;
- a repair that asks while a bar is unfinished records no empty answer: OANDA
  is sparse, and one empty answer would confirm the bar empty for ever.

In-process (poller, backfill path, healer) on a real socket and database,
at pinned FX instants (inside the week, whatever the hour of the run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from candled import backfill
from candled import clock as wallclock
from candled.backfill import Backfiller, BackfillJob
from candled.config import SeriesSpec
from candled.domain import Candle, DataProfile, SeriesKey
from candled.fetch import Fetcher
from candled.healer import Healer, Repairer
from candled.poller import Poller
from candled.store import healing
from candled.store.database import Database
from candled.store.series import sync_configured
from candled.store.writer import CandleStore
from candled.throttle import VenueThrottle
from candled.venues import Credentials, get_codec
from candled.venues.oanda import parse_time
from candled_sim import SimExchange, parse_scenario
from candled_sim.oanda import SIM_TOKEN, OandaPersonality
from candled_sim.oanda.wire import as_published
from tests.daemon_proc import SimRequest, at, record_requests

KEY = SeriesKey("oanda", "EUR_USD", "1m")
SIM_KEY = SeriesKey("sim", "EUR_USD", "1m")
TF = KEY.tf
CODEC = get_codec("oanda", credentials=Credentials(SIM_TOKEN))
SCENARIO = {"seed": 21, "symbols": [{"symbol": "EUR_USD", "listed": "-60d", "profile": "FOREX"}]}
# A Wednesday inside the FX week: every minute has a price (not illiquid).
MIDWEEK = at("2026-11-25T14:30:00Z")
Clock = Callable[[], datetime]


def running_from(instant: datetime) -> Clock:
    """A clock that reads `instant` now and runs on with the wall clock."""
    shift = instant - wallclock.now()
    return lambda: wallclock.now() + shift


@dataclass
class Rig:
    sim: SimExchange
    oanda: OandaPersonality  # its `settle` may be changed while the rig runs
    requests: list[SimRequest]
    backfiller: Backfiller
    stored: list[Candle]
    db: Database

    def truth(self, start: datetime, end: datetime) -> list[tuple[object, ...]]:
        bars = self.sim.truth.candles(SIM_KEY, start, end, end, sparse=True)
        return [_values(as_published(c)) for c in bars]

    def stored_values(self, start: datetime, end: datetime) -> list[tuple[object, ...]]:
        return sorted({_values(c) for c in self.stored if start <= c.ts < end})

    def asked(self, bar: datetime) -> list[SimRequest]:
        """The candles requests whose window held `bar`."""
        return [r for r in self.requests if _window(r)[0] <= bar < _window(r)[1]]


def _window(request: SimRequest) -> tuple[datetime, datetime]:
    """The bars [first, end) a candles request asked for (`to` is a
    microsecond before the end, as the codec writes it)."""
    first, to = parse_time(request.params["from"]), parse_time(request.params["to"])
    return first, to + timedelta(microseconds=1)


def _values(c: Candle) -> tuple[object, ...]:
    return (c.ts, c.open, c.high, c.low, c.close, c.volume)


MakeRig = Callable[[Clock, Clock, float], Awaitable[Rig]]


@pytest.fixture
async def make_rig(migrated: str) -> AsyncIterator[MakeRig]:
    """Rigs whose daemon side reads the clock `ours` and whose OANDA reads
    `theirs`, completing candles `settle_s` after their close."""
    db = await Database.connect(migrated)
    async with AsyncExitStack() as stack:

        async def make(ours: Clock, theirs: Clock, settle_s: float) -> Rig:
            sim = SimExchange(parse_scenario(SCENARIO, theirs()), clock=theirs, protocol="oanda")
            oanda = sim.personality
            assert isinstance(oanda, OandaPersonality)
            oanda.settle = timedelta(seconds=settle_s)
            requests = record_requests(sim, theirs)
            _, port = await sim.start("127.0.0.1", 0)
            stack.push_async_callback(sim.stop)
            throttle = VenueThrottle(100, 1.0, 5)
            fetcher = await stack.enter_async_context(
                Fetcher(f"http://127.0.0.1:{port}", CODEC, throttle, retry_base_s=0.05)
            )
            stored: list[Candle] = []

            async def sink(candles: Sequence[Candle]) -> None:
                await CandleStore(db.pool).write(candles)
                stored.extend(candles)

            backfiller = Backfiller(CODEC, fetcher, sink, db.pool, clock=ours)
            return Rig(sim, oanda, requests, backfiller, stored, db)

        try:
            yield make
        finally:
            await stack.aclose()
            await db.close()


async def poll_until(poller: Poller, done: Callable[[], bool], within: float) -> None:
    """Run the poller until `done()`; `within` seconds only stop a hang."""
    async with asyncio.timeout(within), asyncio.TaskGroup() as tg:
        task = tg.create_task(poller.run())
        while not done():
            await asyncio.sleep(0.05)
        task.cancel()


DELAY = timedelta(milliseconds=500)
REPOLL = timedelta(seconds=1)


# --- the poller ----------------------------------------------------------------


async def test_the_poller_asks_again_until_oanda_completes_the_bar(make_rig: MakeRig) -> None:
    """Polled half a second after its close, the bar is `complete: false` for
    4 s more: it is asked for again every second until it is complete, then
    stored as OANDA publishes it. Before, the poll dropped it and moved on."""
    ours = running_from(MIDWEEK + timedelta(seconds=58))  # 14:30 closes in 2 s
    rig = await make_rig(ours, ours, 4.0)
    bar = TF.floor(ours())
    close = TF.close_time(bar)
    holes: list[BackfillJob] = []
    poller = Poller(rig.backfiller.run_job, holes.append, [KEY], DELAY, ours,
                    settling=timedelta(seconds=30), repoll=REPOLL)  # fmt: skip
    await poll_until(poller, lambda: any(c.ts == bar for c in rig.stored), within=30)

    assert rig.stored_values(bar, close) == rig.truth(bar, close)
    assert not holes and poller.failures == 0 and poller.unsettled == 0
    asked = rig.asked(bar)
    assert all(r.status == 200 and r.at >= close for r in asked)  # never before its close
    unfinished = [r for r in asked if r.at < close + timedelta(seconds=4)]
    assert len(unfinished) >= 3  # asked while OANDA had not completed it, and again
    assert asked[-1].at >= close + timedelta(seconds=4)  # stored from a complete answer
    # A second apart, not in a tight loop.
    assert len(asked) <= 8


async def test_a_bar_unfinished_past_the_settling_time_is_handed_on_as_a_hole(
    make_rig: MakeRig,
) -> None:
    ours = running_from(MIDWEEK + timedelta(seconds=58))
    rig = await make_rig(ours, ours, 60.0)  # OANDA completes it only after a minute
    bar = TF.floor(ours())
    close = TF.close_time(bar)
    holes: list[BackfillJob] = []
    settling = timedelta(seconds=3)
    poller = Poller(rig.backfiller.run_job, holes.append, [KEY], DELAY, ours,
                    settling=settling, repoll=REPOLL)  # fmt: skip
    await poll_until(poller, lambda: bool(holes), within=30)

    (hole,) = holes
    assert (hole.series, hole.start, hole.end, hole.reason) == (KEY, bar, close, "reconnect")
    assert poller.unsettled == 1 and poller.failures == 0
    assert not any(c.ts == bar for c in rig.stored)  # no unfinished values stored
    asked = rig.asked(bar)
    assert len(asked) >= 3 and asked[-1].at >= close + settling > asked[-2].at


# --- the backfill queue -------------------------------------------------------------


async def test_a_catch_up_ending_on_an_unfinished_bar_asks_again_until_it_arrives(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The startup catch-up's newest bar closed a second ago and is not
    complete yet: the job stores the rest and says so; the queue asks again
    for that bar (without holding up join(), which the heal loop waits on)
    until OANDA completes it."""
    monkeypatch.setattr(backfill, "NOT_FINAL_RETRY_S", 1.0)
    ours = running_from(MIDWEEK + timedelta(seconds=61))  # 14:30 closed 1 s ago
    rig = await make_rig(ours, ours, 4.0)
    now = ours()
    bar = TF.floor(now) - timedelta(minutes=1)
    start = now - timedelta(hours=1)
    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        workers = tg.create_task(rig.backfiller.run())
        rig.backfiller.submit(BackfillJob(KEY, start, now, "lookback"))
        await rig.backfiller.join()
        assert not any(c.ts == bar for c in rig.stored)  # join() did not wait for it
        first = rig.backfiller.results[0]
        assert (first.complete, first.not_final) == (False, bar)
        while not any(c.ts == bar for c in rig.stored):
            await asyncio.sleep(0.05)
        workers.cancel()
    tail = TF.floor(now)
    assert rig.stored_values(TF.ceil(start), tail) == rig.truth(TF.ceil(start), tail)
    again = [r for r in rig.backfiller.results if r.job.start == bar]
    assert again and again[-1].complete and again[-1].job.reason == "reconnect"
    assert {r.status for r in rig.requests} == {200}


# --- a clock ahead of OANDA's ----------------------------------------------------


AHEAD = timedelta(seconds=3)


async def test_catch_up_with_a_clock_ahead_of_oandas_gets_no_400(make_rig: MakeRig) -> None:
    """A catch-up ends at "now"; `to` is clamped to the open of the bar in
    progress, which OANDA's clock, 3 s behind, has passed. Before, `to` was
    now and OANDA answered 400 "Time is in the future": a definite error."""
    ours = running_from(MIDWEEK + timedelta(seconds=30))
    theirs = running_from(MIDWEEK + timedelta(seconds=30) - AHEAD)
    rig = await make_rig(ours, theirs, 0.0)
    now = ours()
    result = await rig.backfiller.run_job(BackfillJob(KEY, now - timedelta(hours=2), now,
                                                      "lookback"))  # fmt: skip
    assert result.complete, result.error
    assert {r.status for r in rig.requests} == {200}
    assert max(_window(r)[1] for r in rig.requests) == TF.floor(now)
    start = TF.ceil(now - timedelta(hours=2))
    assert rig.stored_values(start, TF.floor(now)) == rig.truth(start, TF.floor(now))


async def test_a_poll_ahead_of_oandas_clock_is_not_yet_and_asked_again(
    make_rig: MakeRig,
) -> None:
    """Polled half a second after the close by our clock, the bar is still in
    progress by OANDA's, 3 s behind: its 400 "Time is in the future" means
    "not yet", so the bar is asked for again until OANDA has closed it."""
    ours = running_from(MIDWEEK + timedelta(seconds=58))
    theirs = running_from(MIDWEEK + timedelta(seconds=58) - AHEAD)
    rig = await make_rig(ours, theirs, 0.0)
    bar = TF.floor(ours())
    close = TF.close_time(bar)
    holes: list[BackfillJob] = []
    poller = Poller(rig.backfiller.run_job, holes.append, [KEY], DELAY, ours,
                    settling=timedelta(seconds=30), repoll=REPOLL)  # fmt: skip
    await poll_until(poller, lambda: any(c.ts == bar for c in rig.stored), within=30)

    assert rig.stored_values(bar, close) == rig.truth(bar, close)
    assert not holes and poller.failures == 0
    statuses = [r.status for r in rig.asked(bar)]
    assert statuses[0] == 400 and statuses[-1] == 200, statuses


# --- repair -------------------------------------------------------------------------


async def test_a_repair_while_the_bar_is_unfinished_confirms_nothing_empty(
    make_rig: MakeRig,
) -> None:
    """The heal cycle asks about a bar 35 s after its close (past the generic
    30 s) while OANDA has not completed it. OANDA is sparse: an empty answer
    would confirm the bar empty, never to be asked for again. The unfinished
    answer is no answer: an attempt that failed, asked again later, and the
    bar is stored once OANDA completes it."""
    now = MIDWEEK + timedelta(minutes=1, seconds=35)  # 14:30 closed at 14:31:00
    bar = MIDWEEK
    rig = await make_rig(lambda: now, lambda: now, 60.0)
    spec = SeriesSpec(KEY, DataProfile.FOREX, "", True, timedelta(hours=1))
    async with rig.db.pool.acquire() as conn:
        await sync_configured(conn, {KEY: (spec.profile, spec.calendar)})
    # Everything before the bar is stored; the bar is the only hole.
    done = await rig.backfiller.run_job(BackfillJob(KEY, now - spec.lookback, bar, "lookback"))
    assert done.complete, done.error
    # Judged after the generic 30 s, as before the venue had a settling time.
    healer = Healer(rig.db.pool, {KEY: spec}, interval=timedelta(minutes=15), confirm_after=3,
                    settling={"oanda": timedelta(0)}, clock=lambda: now)  # fmt: skip
    repairers = {"oanda": Repairer(CODEC.limits, rig.backfiller.run_job)}
    (audit,) = await healer.audit(full=True, at=now)
    assert audit.gaps == [(bar, TF.next(bar))]

    report = await healer.repair(repairers, [audit], max_fills=10)
    assert (report.errors, report.empty, report.confirmed_empty) == (1, 0, 0)
    async with rig.db.pool.acquire() as conn:
        row = await healing.series_row(conn, *("oanda", "EUR_USD", "1m"))
        assert row is not None
        assert not await healing.empty_states(conn, row.id)
        outcomes = await conn.fetch(
            "SELECT start_ts, outcome FROM repair_attempts WHERE series_id = $1", row.id
        )
    assert [(r["start_ts"], r["outcome"]) for r in outcomes] == [(bar, "error")]

    rig.oanda.settle = timedelta(0)  # OANDA has completed it: the next cycle fills it
    (audit,) = await healer.audit(full=True, at=now)
    report = await healer.repair(repairers, [audit], max_fills=10)
    assert report.candles == 1 and report.errors == 0
    assert rig.stored_values(bar, TF.next(bar)) == rig.truth(bar, TF.next(bar))
