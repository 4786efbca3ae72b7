"""Backfill workers against the simulated exchange and a real TimescaleDB:
what reaches the store, genesis, maintenance gaps and the BATCH bound."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from candled import clock
from candled.backfill import Backfiller, BackfillJob
from candled.domain import Candle, SeriesKey
from candled.fetch import Fetcher, Response
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import get_genesis
from candled.store.writer import CandleStore
from candled.throttle import VenueThrottle
from candled.venues import HttpRequest, VenueLimits
from candled.venues.binance import LIMITS, BinanceCodec
from candled.venues.wire import to_ms
from candled_sim import SimExchange, parse_scenario

pytestmark = pytest.mark.timeout(60)
NEW_1M = SeriesKey("binance", "NEWUSDT", "1m")  # listed 2 hours ago
NEW_1S = SeriesKey("binance", "NEWUSDT", "1s")
OLD_1M = SeriesKey("binance", "OLDUSDT", "1m")
MAINT_1M = SeriesKey("binance", "MNTUSDT", "1m")  # no data from 30 to 20 minutes ago


class SmallPages(BinanceCodec):
    """Binance with short pages, so that a test window spans many of them
    (and, with exact_genesis=False, like a venue that cannot say where history starts)."""

    def __init__(self, page_size: int, exact_genesis: bool = True) -> None:
        super().__init__()
        self._limits = dataclasses.replace(LIMITS, page_size=page_size, exact_genesis=exact_genesis)

    @property
    def limits(self) -> VenueLimits:
        return self._limits


class RecordingFetcher(Fetcher):
    """Notes every request's parameters and how many were in flight at once."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.params: list[dict[str, str]] = []
        self.in_flight = self.peak = 0

    async def fetch(self, req: HttpRequest) -> Response:
        self.params.append(dict(req.params))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().fetch(req)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimExchange, str]]:
    scenario = parse_scenario(
        {
            "seed": 11,
            "symbols": [
                {"symbol": "NEWUSDT", "listed": "-2h"},
                {"symbol": "OLDUSDT", "listed": "-30d"},
                {"symbol": "MNTUSDT", "listed": "-30d"},
                {"symbol": "SOONUSDT", "listed": "+1h"},
            ],
            "maintenance": [{"start": "-30m", "end": "-20m", "symbols": ["MNTUSDT"]}],
            # Slow enough that the workers would pile up without the BATCH bound.
            "faults": {"slow_responses": {"every": 1, "delay": "20ms"}},
        },
        clock.now(),
    )
    exchange = SimExchange(scenario)
    host, port = await exchange.start("127.0.0.1", 0)
    yield exchange, f"http://{host}:{port}"
    await exchange.stop()


@pytest.fixture
async def db(tsdb_dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(tsdb_dsn)
    async with database.pool.acquire() as conn:
        await migrate(conn)
    yield database
    await database.close()


def backfiller(
    url: str, db: Database, codec: BinanceCodec | None = None, batch: int = 5, workers: int = 8
) -> tuple[Backfiller, RecordingFetcher]:
    codec = codec or BinanceCodec()
    fetcher = RecordingFetcher(url, codec, VenueThrottle(6000, 60, batch), retry_base_s=0.05)
    store = CandleStore(db.pool)

    async def sink(candles: Sequence[Candle]) -> None:
        await store.write(candles)

    return Backfiller(codec, fetcher, sink, db.pool, workers=workers), fetcher


async def run_jobs(backfiller: Backfiller, *jobs: BackfillJob) -> None:
    async with backfiller.fetcher, asyncio.timeout(30), asyncio.TaskGroup() as tg:
        workers = tg.create_task(backfiller.run())
        for job in jobs:
            backfiller.submit(job)
        await backfiller.join()
        workers.cancel()


async def stored(db: Database, series: SeriesKey) -> list[Candle]:
    rows = await db.pool.fetch(
        """SELECT ts, open, high, low, close, volume FROM candles
           WHERE venue = $1 AND symbol = $2 AND timeframe = $3 ORDER BY ts""",
        series.venue, series.symbol, series.timeframe,
    )  # fmt: skip
    return [Candle(series, r["ts"], *(r[k] for k in ("open", "high", "low", "close", "volume")))
            for r in rows]  # fmt: skip


def lookback(series: SeriesKey, days: float = 1) -> BackfillJob:
    end = series.tf.floor(clock.now())  # aligned: every bar before it has closed
    return BackfillJob(series, end - timedelta(days=days), end, "lookback")


async def test_lookback_stores_truth_from_genesis_and_asks_genesis_once(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    exchange, url = sim
    jobs = [lookback(NEW_1M), lookback(NEW_1S)]
    b, fetcher = backfiller(url, db)
    await run_jobs(b, *jobs)

    assert all(r.complete for r in b.results), b.results
    for job in jobs:
        genesis = exchange.truth.genesis(job.series)
        assert genesis is not None
        truth = exchange.truth.candles(job.series, job.start, job.end, job.end)
        assert truth[0].ts == genesis
        assert await stored(db, job.series) == truth  # value for value, no duplicates

        row = await db.pool.fetchrow(
            "SELECT genesis_ts, genesis_evidence FROM series WHERE symbol = $1 AND timeframe = $2",
            job.series.symbol, job.series.timeframe,
        )  # fmt: skip
        assert row["genesis_ts"] == genesis
        evidence = json.loads(row["genesis_evidence"])
        assert evidence["method"] == "exact"
        assert evidence["params"]["startTime"] == "0"

        asked = [p for p in fetcher.params if p["interval"] == job.series.timeframe]
        assert [p["startTime"] for p in asked].count("0") == 1  # the genesis probe, once
        pages = [p for p in asked if p["startTime"] != "0"]
        assert all(int(p["startTime"]) >= to_ms(genesis) for p in pages)
        # Nothing was asked for the empty part of the day: one request per page of bars.
        assert len(pages) == -(-len(truth) // LIMITS.page_size)

    # A restart: genesis comes from the store, and nothing before it is asked for.
    again, fetcher = backfiller(url, db)
    await run_jobs(again, *jobs)
    assert all(p["startTime"] != "0" for p in fetcher.params)
    for job in jobs:
        genesis_ms = to_ms(exchange.truth.genesis(job.series) or job.end)
        assert all(int(p["startTime"]) >= genesis_ms for p in fetcher.params
                   if p["interval"] == job.series.timeframe)  # fmt: skip
        async with db.pool.acquire() as conn:
            assert await get_genesis(conn, job.series) == exchange.truth.genesis(job.series)
        truth = exchange.truth.candles(job.series, job.start, job.end, job.end)
        assert await stored(db, job.series) == truth


async def test_maintenance_window_is_skipped_and_paging_goes_on_past_it(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    exchange, url = sim
    job = lookback(MAINT_1M, days=1 / 24)  # the last hour, with the 10-minute gap in it
    b, fetcher = backfiller(url, db, codec=SmallPages(4))  # pages start inside the gap
    await run_jobs(b, job)

    assert [r.complete for r in b.results] == [True] * len(b.results)
    candles = await stored(db, MAINT_1M)
    assert candles == exchange.truth.candles(MAINT_1M, job.start, job.end, job.end)
    stamps = [c.ts for c in candles]
    gap_start = min(t for t in MAINT_1M.tf.bars(job.start, job.end) if t not in stamps)
    gap = [t for t in MAINT_1M.tf.bars(job.start, job.end) if t not in stamps]
    assert len(gap) == 9  # bars wholly inside the 10 minutes: nothing stored there
    assert gap == [gap_start + timedelta(minutes=i) for i in range(9)]
    assert stamps[-1] == MAINT_1M.tf.add(job.end, -1)  # and the paging reached the end
    assert len(fetcher.params) > len(candles) // 4  # it did page, 4 bars at a time


async def test_genesis_heuristic_where_the_venue_cannot_answer_it(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    """Empty pages, then data, then an empty deeper probe: genesis at the first bar."""
    exchange, url = sim
    job = lookback(NEW_1M)  # listed 2 hours ago: 22 hours of empty pages first
    b, fetcher = backfiller(url, db, codec=SmallPages(100, exact_genesis=False))
    await run_jobs(b, job)

    genesis = exchange.truth.genesis(NEW_1M)
    assert genesis is not None
    assert await stored(db, NEW_1M) == exchange.truth.candles(NEW_1M, job.start, job.end, job.end)
    row = await db.pool.fetchrow(
        "SELECT genesis_ts, genesis_evidence FROM series WHERE symbol = $1 AND timeframe = '1m'",
        NEW_1M.symbol,
    )
    assert row["genesis_ts"] == genesis
    evidence = json.loads(row["genesis_evidence"])
    assert evidence["method"] == "heuristic"
    assert evidence["first_bar"] == genesis.isoformat()
    assert all(p["startTime"] != "0" for p in fetcher.params)  # no exact question asked
    # The probes asked for a page 1, 10 and 100 pages before the empty run.
    empty_from = datetime.fromisoformat(evidence["empty_from"])
    assert empty_from < genesis
    probes = [[datetime.fromisoformat(t) for t in probe] for probe in evidence["probes"]]
    assert [(end - start, empty_from - end) for start, end in probes] == [
        (timedelta(minutes=100), timedelta(minutes=100 * n)) for n in (0, 9, 99)
    ]
    asked = [p["startTime"] for p in fetcher.params]
    assert all(str(to_ms(start)) in asked for start, _ in probes)

    # Nothing before genesis is asked for again.
    again, fetcher = backfiller(url, db, codec=SmallPages(100, exact_genesis=False))
    await run_jobs(again, job)
    assert fetcher.params and all(int(p["startTime"]) >= to_ms(genesis) for p in fetcher.params)


async def test_an_empty_run_with_history_before_it_is_no_genesis(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    exchange, url = sim
    end = MAINT_1M.tf.floor(clock.now())
    job = BackfillJob(MAINT_1M, end - timedelta(minutes=28), end, "lookback")  # starts in the gap
    b, _ = backfiller(url, db, codec=SmallPages(4, exact_genesis=False))
    await run_jobs(b, job)

    assert all(r.complete for r in b.results)
    assert await stored(db, MAINT_1M) == exchange.truth.candles(MAINT_1M, job.start, end, end)
    async with db.pool.acquire() as conn:
        assert await get_genesis(conn, MAINT_1M) is None  # the probe found older bars


async def test_a_quiet_spell_longer_than_a_page_is_no_genesis_either(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    """Three-bar pages (one job, not split): the empty run and the first probe
    both fall in the 10-minute gap; the probe ten pages back finds older bars."""
    exchange, url = sim
    end = MAINT_1M.tf.floor(clock.now())
    job = BackfillJob(MAINT_1M, end - timedelta(minutes=26), end, "lookback")
    b, fetcher = backfiller(url, db, codec=SmallPages(3, exact_genesis=False))
    await run_jobs(b, job)

    assert all(r.complete for r in b.results)
    assert await stored(db, MAINT_1M) == exchange.truth.candles(MAINT_1M, job.start, end, end)
    async with db.pool.acquire() as conn:
        assert await get_genesis(conn, MAINT_1M) is None
    asked = [p["startTime"] for p in fetcher.params]
    assert str(to_ms(job.start - timedelta(minutes=3))) in asked  # the page before: empty
    assert str(to_ms(job.start - timedelta(minutes=30))) in asked  # ten pages before: bars


async def test_batch_bounds_concurrent_requests(sim: tuple[SimExchange, str], db: Database) -> None:
    exchange, url = sim
    job = lookback(OLD_1M, days=0.25)  # 360 bars, 8 pieces of 10 pages of 5
    b, fetcher = backfiller(url, db, codec=SmallPages(5), batch=2, workers=8)
    await run_jobs(b, job)

    assert fetcher.peak == 2  # the bound held, and was used
    assert len(b.results) == 8 and all(r.complete for r in b.results)
    assert await stored(db, OLD_1M) == exchange.truth.candles(OLD_1M, job.start, job.end, job.end)


async def test_unknown_symbol_fails_its_job_only(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    exchange, url = sim
    bad = SeriesKey("binance", "NOPEUSDT", "1m")
    good = lookback(OLD_1M, days=1 / 24)
    b, fetcher = backfiller(url, db)
    await run_jobs(b, lookback(bad), good)

    by_series = {r.job.series: r for r in b.results}
    assert not by_series[bad].complete
    assert "Invalid symbol" in (by_series[bad].error or "")
    assert [p["symbol"] for p in fetcher.params].count("NOPEUSDT") == 1  # no retry
    assert by_series[OLD_1M].complete
    truth = exchange.truth.candles(OLD_1M, good.start, good.end, good.end)
    assert await stored(db, OLD_1M) == truth


async def test_a_genesis_not_known_yet_is_asked_again(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    soon = SeriesKey("binance", "SOONUSDT", "1m")  # listed in an hour
    b, fetcher = backfiller(url=sim[1], db=db)
    await run_jobs(b, lookback(soon, days=1 / 24))
    await run_jobs(b, lookback(soon, days=1 / 24))

    assert all(r.complete and r.candles == 0 for r in b.results)
    assert [p["startTime"] for p in fetcher.params].count("0") == 2  # once per job
    async with db.pool.acquire() as conn:
        assert await get_genesis(conn, soon) is None


async def test_a_malformed_genesis_answer_is_asked_again(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    """A broken body to the genesis request must not fail the job."""

    class BrokenFirstAnswer(RecordingFetcher):
        async def fetch(self, req: HttpRequest) -> Response:
            resp = await super().fetch(req)
            first = len(self.params) == 1
            return dataclasses.replace(resp, body=b"<html>maintenance</html>") if first else resp

    exchange, url = sim
    codec = BinanceCodec()
    fetcher = BrokenFirstAnswer(url, codec, VenueThrottle(6000, 60, 5), retry_base_s=0.05)
    store = CandleStore(db.pool)

    async def sink(candles: Sequence[Candle]) -> None:
        await store.write(candles)

    b = Backfiller(codec, fetcher, sink, db.pool)
    job = lookback(NEW_1M, days=1 / 24)
    await run_jobs(b, job)

    assert [r.complete for r in b.results] == [True]
    assert [p["startTime"] for p in fetcher.params][:2] == ["0", "0"]  # the genesis, twice
    assert await stored(db, NEW_1M) == exchange.truth.candles(NEW_1M, job.start, job.end, job.end)


class GarbledFirst(RecordingFetcher):
    """The first `n` answers arrive garbled (as from a broken proxy); the rest as sent."""

    def __init__(self, *args: Any, n: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.garbled = n

    async def fetch(self, req: HttpRequest) -> Response:
        response = await super().fetch(req)
        if self.garbled:
            self.garbled -= 1
            return dataclasses.replace(response, body=b"<html>502 Bad Gateway</html>")
        return response


async def test_a_job_failing_for_a_passing_reason_is_queued_again(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    exchange, url = sim
    job = lookback(OLD_1M, days=1 / 24)
    codec = BinanceCodec()
    # Three garbled answers in a row: the page's tries run out and the job fails once.
    fetcher = GarbledFirst(url, codec, VenueThrottle(6000, 60, 5), retry_base_s=0.05, n=3)
    b = Backfiller(codec, fetcher, CandleStore(db.pool).write, db.pool)
    await run_jobs(b, job)

    first, second = b.results
    assert not first.complete and first.transient and "CodecError" in (first.error or "")
    assert second.complete and second.job.attempt == 1
    truth = exchange.truth.candles(OLD_1M, job.start, job.end, job.end)
    assert await stored(db, OLD_1M) == truth


async def test_join_waits_for_the_jobs_submitted_before_it_not_later_ones(
    sim: tuple[SimExchange, str], db: Database
) -> None:
    """The heal loop joins the startup backfill; a stream that keeps dropping
    keeps submitting gap fetches, which must not hold that join up for ever."""
    _, url = sim
    codec = BinanceCodec()
    fetcher = RecordingFetcher(url, codec, VenueThrottle(6000, 60, 5), retry_base_s=0.05)
    store = CandleStore(db.pool)
    gate = asyncio.Event()  # later jobs' candles wait here until the test is done

    async def sink(candles: Sequence[Candle]) -> None:
        if candles and candles[0].series.symbol == "MNTUSDT":
            await gate.wait()
        await store.write(candles)

    bf = Backfiller(codec, fetcher, sink, db.pool, workers=4)
    now = OLD_1M.tf.floor(clock.now())
    early = BackfillJob(OLD_1M, now - timedelta(hours=2), now, "lookback")
    later = BackfillJob(MAINT_1M, now - timedelta(hours=1), now, "live-gap")
    async with fetcher, asyncio.timeout(60), asyncio.TaskGroup() as tg:
        workers = tg.create_task(bf.run())
        bf.submit(early)
        joined = tg.create_task(bf.join())
        await asyncio.sleep(0)  # join() has begun: what it waits for is decided
        bf.submit(later)  # still running when join() must return
        await joined
        assert len(await stored(db, early.series)) == 120
        assert not await stored(db, later.series)
        gate.set()
        await bf.join()
        workers.cancel()
    assert await stored(db, later.series)
