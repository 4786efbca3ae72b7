"""Self-healing end to end: the simulated exchange, a real TimescaleDB, the
backfill path, and the healer's audit and repair."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from candled import calendars, metrics
from candled import clock as wallclock
from candled.backfill import Backfiller, BackfillJob
from candled.config import SeriesSpec
from candled.domain import Candle, DataProfile, SeriesKey
from candled.fetch import Fetcher
from candled.healer import Healer, Repairer
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.series import sync_configured
from candled.store.writer import CandleStore
from candled.throttle import VenueThrottle
from candled.venues import get_codec
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import REPO, series_toml, venue_toml, write_config

NOW = wallclock.now()
CRYPTO = SeriesKey("binance", "AAAUSDT", "1m")
EARLY_GAP = SeriesKey("binance", "CCCUSDT", "1m")  # the venue lacks part of its history
EQUITY = SeriesKey("binance", "EQQUSD", "1m")


def specs() -> dict[SeriesKey, SeriesSpec]:
    day = timedelta(days=1)
    return {
        CRYPTO: SeriesSpec(CRYPTO, DataProfile.CRYPTO, "", True, day),
        EARLY_GAP: SeriesSpec(EARLY_GAP, DataProfile.CRYPTO, "", True, day),
        EQUITY: SeriesSpec(EQUITY, DataProfile.EQUITY, "XNYS", True, timedelta(days=4)),
    }


@dataclass
class Rig:
    sim: SimExchange
    db: Database
    backfiller: Backfiller
    healer: Healer
    port: int
    dsn: str

    @property
    def repairers(self) -> dict[str, Repairer]:
        return {"binance": Repairer(self.backfiller.codec.limits, self.backfiller.run_job)}


@pytest.fixture
async def rig(tsdb_dsn: str) -> AsyncIterator[Rig]:
    scenario: dict[str, Any] = {
        "seed": 5,
        "symbols": [{"symbol": k.symbol, "listed": "-30d"} for k in (CRYPTO, EARLY_GAP, EQUITY)],
        # 40 minutes early in the lookback that the venue never had.
        "maintenance": [{"start": "-20h", "end": "-1160m", "symbols": [EARLY_GAP.symbol]}],
    }
    sim = SimExchange(parse_scenario(scenario, NOW))
    _, port = await sim.start("127.0.0.1", 0)
    db = await Database.connect(tsdb_dsn)
    async with db.pool.acquire() as conn:
        await migrate(conn)
        await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs().items()})
    store = CandleStore(db.pool)
    codec = get_codec("binance")
    throttle = VenueThrottle(6000, 60, 5)
    async with Fetcher(f"http://127.0.0.1:{port}", codec, throttle) as fetcher:
        backfiller = Backfiller(codec, fetcher, store.write, db.pool)
        healer = Healer(db.pool, specs(), interval=timedelta(seconds=2), confirm_after=3)
        yield Rig(sim, db, backfiller, healer, port, tsdb_dsn)
    await db.close()
    await sim.stop()


async def backfill_everything(rig: Rig) -> None:
    now = wallclock.now()
    for key, spec in specs().items():
        result = await rig.backfiller.run_job(
            BackfillJob(key, now - spec.lookback, now, "lookback")
        )
        assert result.complete, result.error


async def stored(conn: asyncpg.Connection, key: SeriesKey) -> dict[datetime, tuple[float, ...]]:
    rows = await conn.fetch(
        """SELECT ts, open, high, low, close, volume FROM candles
           WHERE venue=$1 AND symbol=$2 AND timeframe=$3""",
        key.venue, key.symbol, key.timeframe,
    )  # fmt: skip
    return {r["ts"]: tuple(r)[1:] for r in rows}


def values(c: Candle) -> tuple[float, ...]:
    return (c.open, c.high, c.low, c.close, c.volume)


async def test_audit_finds_deleted_bars_and_repair_restores_truth(rig: Rig) -> None:
    await backfill_everything(rig)
    rnd = random.Random(3)
    async with rig.db.pool.acquire() as conn:
        deleted: dict[SeriesKey, list[datetime]] = {}
        for key in (CRYPTO, EQUITY):
            present = sorted(await stored(conn, key))
            if key == EQUITY:  # only bars the calendar expects count as holes
                ranges = calendars.expected_ranges(DataProfile.EQUITY, "XNYS", key.tf,
                                                   present[0], present[-1])  # fmt: skip
                present = [t for t in present if any(s <= t < e for s, e in ranges)]
            deleted[key] = rnd.sample(present[:-5], 40)
            await conn.execute(
                """DELETE FROM candle_data WHERE ts = ANY($2::timestamptz[]) AND series_id =
                   (SELECT id FROM series WHERE venue='binance' AND symbol=$1 AND timeframe='1m')""",
                key.symbol, deleted[key],
            )  # fmt: skip
    outside_before = metrics.bars_outside_calendar.labels("binance")._value.get()
    audits = {a.key: a for a in await rig.healer.audit(full=True)}
    # The sim publishes equity bars around the clock: kept, and reported.
    assert metrics.bars_outside_calendar.labels("binance")._value.get() > outside_before
    for key in (CRYPTO, EQUITY):
        assert audits[key].status == "DEGRADED"
        assert audits[key].missing_bars == 40
        assert sorted(t for s, e in audits[key].gaps for t in key.tf.bars(s, e)) == sorted(
            deleted[key]
        )
    report = await rig.healer.repair(rig.repairers, list(audits.values()), max_fills=100)
    assert report.candles >= 80 and report.errors == 0
    after = {a.key: a for a in await rig.healer.audit()}
    assert after[CRYPTO].status == "OK" and after[EQUITY].status == "OK"
    async with rig.db.pool.acquire() as conn:
        for key in (CRYPTO, EQUITY):
            got = await stored(conn, key)
            for ts in deleted[key]:
                assert got[ts] == values(rig.sim.truth.bar(key, ts))
        status = await conn.fetch("SELECT symbol, status, missing_bars FROM series_status")
    by_symbol = {r["symbol"]: (r["status"], r["missing_bars"]) for r in status}
    assert by_symbol[CRYPTO.symbol] == ("OK", 0) and by_symbol[EQUITY.symbol] == ("OK", 0)


async def test_range_the_venue_lacks_is_confirmed_empty_after_k_cycles(rig: Rig) -> None:
    await backfill_everything(rig)
    requests_per_cycle = []
    for _cycle in range(4):
        before = sum(rig.sim.counters.requests_by_status.values())
        audits = await rig.healer.audit([EARLY_GAP])
        await rig.healer.repair(rig.repairers, audits, max_fills=10)
        requests_per_cycle.append(sum(rig.sim.counters.requests_by_status.values()) - before)
        # The next cycle once the range is due again (retries at growing intervals).
        async with rig.db.pool.acquire() as conn:
            due = await conn.fetchval("SELECT max(next_attempt_at) FROM empty_ranges")
        assert due is None or due - wallclock.now() < timedelta(seconds=30), due  # a few s
        while due is not None and wallclock.now() < due:
            await asyncio.sleep(0.1)
    # Three empty answers (one per cycle), then the range is never asked again.
    assert requests_per_cycle[:3] == [1, 1, 1] and requests_per_cycle[3] == 0
    [audit] = await rig.healer.audit([EARLY_GAP])
    assert audit.status == "OK" and audit.missing_bars == 0
    window = EARLY_GAP.tf.bars(NOW - timedelta(hours=21), NOW - timedelta(hours=19))
    lacking = sum(1 for ts in window if not rig.sim.truth.exists(EARLY_GAP, ts))
    assert lacking >= 39 and audit.confirmed_empty_bars == lacking
    async with rig.db.pool.acquire() as conn:
        outcomes = await conn.fetch("SELECT outcome, candles FROM repair_attempts ORDER BY id")
        confirmed = await conn.fetchval(
            "SELECT count(*) FROM empty_ranges WHERE confirmed_at IS NOT NULL"
        )
    assert [tuple(r) for r in outcomes] == [("empty", 0)] * 3
    assert confirmed == 1


async def test_each_hole_of_a_window_is_judged_by_its_own_bars(rig: Rig) -> None:
    """One request covers a hole the venue can fill and the range it lacks:
    the first is filled, the second still gets its empty answer counted."""
    await backfill_everything(rig)
    lacking = [ts for ts in EARLY_GAP.tf.bars(NOW - timedelta(hours=21), NOW - timedelta(hours=19))
               if not rig.sim.truth.exists(EARLY_GAP, ts)]  # fmt: skip
    deleted = [EARLY_GAP.tf.add(lacking[-1], n) for n in range(30, 40)]  # same page, newer
    async with rig.db.pool.acquire() as conn:
        await conn.execute(
            """DELETE FROM candle_data WHERE ts = ANY($2::timestamptz[]) AND series_id =
               (SELECT id FROM series WHERE venue='binance' AND symbol=$1 AND timeframe='1m')""",
            EARLY_GAP.symbol, deleted,
        )  # fmt: skip
    before = sum(rig.sim.counters.requests_by_status.values())
    audits = await rig.healer.audit([EARLY_GAP])
    assert len(audits[0].gaps) == 2
    report = await rig.healer.repair(rig.repairers, audits, max_fills=10)
    assert sum(rig.sim.counters.requests_by_status.values()) - before == 1  # one window
    assert report.empty == 1 and report.errors == 0
    async with rig.db.pool.acquire() as conn:
        attempts = await conn.fetch(
            "SELECT start_ts, end_ts, outcome, candles FROM repair_attempts ORDER BY start_ts"
        )
        empty = await conn.fetch("SELECT start_ts, end_ts, empty_answers FROM empty_ranges")
        got = await stored(conn, EARLY_GAP)
    assert [(r["outcome"], r["candles"]) for r in attempts] == [("empty", 0), ("filled", 10)]
    assert (attempts[1]["start_ts"], attempts[1]["end_ts"]) == (
        deleted[0],
        EARLY_GAP.tf.next(deleted[-1]),
    )
    assert [(r["start_ts"], r["empty_answers"]) for r in empty] == [(lacking[0], 1)]
    assert all(got[ts] == values(rig.sim.truth.bar(EARLY_GAP, ts)) for ts in deleted)


async def test_audit_command_exit_code_follows_statuses(rig: Rig, tmp_path: Path) -> None:
    """`candled audit` exits 1 while a series is not OK, 0 once repair fixed it."""
    await backfill_everything(rig)
    async with rig.db.pool.acquire() as conn:
        await conn.execute(
            """DELETE FROM candle_data WHERE ts = (SELECT max(ts) - interval '30 minutes' FROM candle_data)
               AND series_id = (SELECT id FROM series WHERE symbol = $1)""",
            CRYPTO.symbol,
        )
    body = venue_toml("binance", rig.port) + series_toml(
        "binance", [CRYPTO.symbol], ["1m"], lookback='"1d"'
    )
    config = write_config(tmp_path, body)

    def candled(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CANDLED_DATABASE_URL": rig.dsn}
        return subprocess.run(
            [sys.executable, "-m", "candled", *args, "--config", str(config)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    audit = await asyncio.to_thread(candled, "audit", "--json")
    assert audit.returncode == 1, audit.stderr
    [row] = json.loads(audit.stdout)
    assert (row["series"], row["status"], row["missing_bars"]) == (str(CRYPTO), "DEGRADED", 1)
    repair = await asyncio.to_thread(candled, "repair")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "1 candles" in repair.stdout
    again = await asyncio.to_thread(candled, "audit")
    assert again.returncode == 0 and "OK" in again.stdout
