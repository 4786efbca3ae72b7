"""End to end: the daemon process against the simulated exchange and a real
TimescaleDB. The store must equal the simulator's truth, value for value."""

from __future__ import annotations

import asyncio
import copy
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled.domain import SeriesKey, Timeframe
from candled.gaps import SETTLE
from candled_sim.counters import SimCounters
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)
from tests.waiting import assert_series_ok, first_request, logged, until

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT"]
TIMEFRAMES = ["1s", "1m"]
KEYS = [SeriesKey("binance", s, tf) for s in SYMBOLS for tf in TIMEFRAMES]
# Six hours of 1s bars (108,000 over five symbols) cover the listing (-2h) and
# the maintenance (-3h); a day of them made this file the suite's slowest.
LOOKBACK = {"1s": timedelta(hours=6), "1m": timedelta(days=1)}
LIVE_S = 10  # after the backfill: bars that only the live stream brings
BACKFILL_BOUND_S = 480  # only stops a hang: a loaded machine may take minutes
# The venue has nothing for BBBUSDT's maintenance: one empty answer (not three,
# minutes apart) confirms it, so that a heal cycle can end with every series OK.
HEALING = "\n[healing]\nconfirm_empty_after = 1\n"


@dataclass(frozen=True)
class Run:
    sim: SimExchange
    counters: SimCounters  # what the daemon made the venue do (no heal pass)
    started: datetime  # just before the daemon process started
    asked: datetime  # at or after its first REST request (lookback computed before)
    stopped: datetime  # just before SIGTERM


def scenario(faults: dict[str, Any] | None = None, weight: int = 6000) -> dict[str, Any]:
    return {
        "seed": 11,
        "rest": {"weight_per_minute": weight, "ban": "20s"},
        "symbols": [
            {"symbol": "AAAUSDT", "listed": "-2h"},
            *({"symbol": s, "listed": "-30d"} for s in SYMBOLS[1:]),
        ],
        "maintenance": [{"start": "-3h", "end": "-170m", "symbols": ["BBBUSDT"]}],
        "faults": faults or {},
    }


async def run_against(
    sim_scenario: dict[str, Any],
    tmp_path: Path,
    dsn: str,
    *,
    rate_capacity: int = 6000,
    idle_timeout: str | None = None,
    live_s: float = LIVE_S,
    heal_pass: bool = False,
    lookback: dict[str, timedelta] = LOOKBACK,
    prelude: Callable[[str], Awaitable[None]] | None = None,
    also: Callable[[SimCounters], bool] = lambda _: True,
) -> Run:
    """Run the daemon (after `prelude(venue URL)`, if any) until its
    orchestrated backfill is done and audited (its first "heal cycle done"),
    and `also(sim counters)` holds; then `live_s` more seconds of live bars
    only, and SIGTERM."""
    sim = SimExchange(parse_scenario(sim_scenario, clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    try:
        body = venue_toml("binance", port, rate_capacity=rate_capacity)
        if idle_timeout:
            body += f'idle_timeout = "{idle_timeout}"\n'
        for tf, depth in lookback.items():
            body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{depth.days}d"'
                                if depth.days else f'"{depth.seconds // 3600}h"')  # fmt: skip
        if prelude is not None:
            await prelude(f"http://127.0.0.1:{port}")
        config = write_config(tmp_path, body + HEALING)
        log = tmp_path / "daemon.log"
        started = clock.now()
        async with running_daemon(config, dsn, log) as proc:
            asked = await first_request(sim)
            await logged(log, "heal cycle done", within=BACKFILL_BOUND_S, proc=proc)
            await until(lambda: also(sim.counters), BACKFILL_BOUND_S, "the faults to fire")
            await asyncio.sleep(live_s)  # bars that only the live stream brings
            assert proc.returncode is None, log.read_text()[-3000:]
            stopped = clock.now()
            assert await stop(proc) == 0
        # What the daemon did, before a heal pass adds requests of its own.
        daemon_counters = copy.deepcopy(sim.counters)
        if heal_pass:
            await repair_pass(config, dsn, tmp_path)
        return Run(sim, daemon_counters, started, asked, stopped)
    finally:
        await sim.stop()


async def assert_store_equals_truth(
    sim: SimExchange,
    dsn: str,
    started: datetime,
    stopped: datetime,
    settle_s: float = 3.0,
    lookback: dict[str, timedelta] = LOOKBACK,
    *,
    asked: datetime | None = None,
) -> None:
    """The store equals the truth over each series' window, from its lookback
    start to `settle_s` before the stop. The daemon computed its lookback
    start between `started` and its first request (`asked`, when known;
    otherwise 10 s after `started` is assumed)."""
    asked = asked or started + timedelta(seconds=10)
    conn = await asyncpg.connect(dsn)
    try:
        for symbol in SYMBOLS:
            for tf_text in TIMEFRAMES:
                key = SeriesKey("binance", symbol, tf_text)
                tf = Timeframe.parse(tf_text)
                rows = await conn.fetch(
                    """SELECT ts, open, high, low, close, volume FROM candles
                       WHERE venue = $1 AND symbol = $2 AND timeframe = $3 ORDER BY ts""",
                    key.venue, key.symbol, key.timeframe,
                )  # fmt: skip
                stored = {r["ts"]: tuple(r)[1:] for r in rows}
                assert len(stored) == len(rows), f"{key}: duplicates"
                genesis = sim.truth.genesis(key)
                assert genesis is not None
                # Every bar from the latest lookback start the daemon can have
                # computed; the last bars may still be on their way at the stop.
                lo = max(genesis, tf.floor(asked - lookback[tf_text]))
                hi = tf.floor(stopped - timedelta(seconds=settle_s))
                truth = {c.ts: (c.open, c.high, c.low, c.close, c.volume)
                         for c in sim.truth.candles(key, lo, hi, now=hi)}  # fmt: skip
                window = {ts: v for ts, v in stored.items() if lo <= ts < hi}
                missing = sorted(truth.keys() - window.keys())
                extra = sorted(window.keys() - truth.keys())
                assert not missing, f"{key}: {len(missing)} bars missing, first {missing[:3]}"
                assert not extra, f"{key}: {len(extra)} bars not in truth, first {extra[:3]}"
                wrong = [ts for ts in truth if truth[ts] != window[ts]]
                assert not wrong, f"{key}: {len(wrong)} bars differ, first {wrong[:3]}"
                assert min(stored) >= genesis, f"{key}: data before genesis"
                assert min(stored) >= tf.floor(started - lookback[tf_text] - timedelta(seconds=1))
                if symbol == "AAAUSDT":
                    stored_genesis = await conn.fetchval(
                        "SELECT genesis_ts FROM series WHERE venue=$1 AND symbol=$2 AND timeframe=$3",
                        key.venue, key.symbol, key.timeframe,
                    )  # fmt: skip
                    assert stored_genesis == genesis
                if symbol == "BBBUSDT":
                    assert not any(
                        started - timedelta(hours=3)
                        <= ts
                        < started - timedelta(hours=2, minutes=50)
                        and not sim.truth.exists(key, ts)
                        for ts in stored
                    )
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_store_equals_truth_after_the_backfill_and_live_bars(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    run = await run_against(scenario(), tmp_path, tsdb_dsn)
    await assert_store_equals_truth(run.sim, tsdb_dsn, run.started, run.stopped, asked=run.asked)
    assert run.counters.sent_429 == 0 and run.counters.sent_418 == 0
    # The daemon's own audit after its backfill found every series complete.
    await assert_series_ok(tsdb_dsn, KEYS)


async def spend_the_budget_but(url: str, budget: int, leave: int) -> None:
    """Early in a venue minute, another client on our IP spends all of the
    venue's weight budget but `leave`: the daemon, whatever its speed, meets
    the real budget with its first few requests (the minute has ~55 s left)."""
    while clock.now().second >= 5:
        await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as other:
        while True:
            async with other.get(url + "/api/v3/ping") as r:
                assert r.status == 200, r.status
                if int(r.headers["X-MBX-USED-WEIGHT-1M"]) >= budget - leave:
                    return


def faults_fired(c: SimCounters) -> bool:
    return bool(c.http_errors_injected and c.ws_drops and c.closing_frames_lost
                and c.ws_idle_periods)  # fmt: skip


@pytest.mark.timeout(720)
async def test_store_equals_truth_under_faults(tsdb_dsn: str, tmp_path: Path) -> None:
    faults = {
        "http_errors": {"every": 15, "burst": 3, "status": 503},
        "ws_drop": {"every": "10s"},
        # Each connection goes silent (pings only) 6 s after it opens, for up
        # to 30 s, and is dropped at 10 s: the drop ends the silence before the
        # 5 s idle timeout would (idle detection alone: test_collector.py).
        "ws_idle": {"after": "6s", "duration": "30s", "pings": True},
        "lost_closing_frames": {"every": 7},
    }
    # Our bucket thinks the venue allows 2000 a minute; it allows 300, less
    # than the backfill needs, and another
    # client on our IP has spent all of it but 20. The first 429 must teach
    # the throttle the real budget.
    depth = {"1s": timedelta(hours=6), "1m": timedelta(days=1)}
    run = await run_against(
        scenario(faults, weight=300), tmp_path, tsdb_dsn, rate_capacity=2000, idle_timeout="5s",
        heal_pass=True, lookback=depth, also=faults_fired,
        prelude=lambda url: spend_the_budget_but(url, 300, leave=20),
    )  # fmt: skip
    # One heal pass (`candled repair`) ran after the stop, as the daemon's next
    # cycle would: the backstop for holes the live path could not fetch before
    # the stop. An audit leaves the last 30 s (SETTLE) for the next one, so
    # judge bars up to 35 s before the stop.
    await assert_store_equals_truth(run.sim, tsdb_dsn, run.started, run.stopped, settle_s=35,
                                    lookback=depth, asked=run.asked)  # fmt: skip
    await assert_series_ok(tsdb_dsn, KEYS)
    c = run.counters
    assert faults_fired(c)
    # Requests already in flight when the first 429 was sent get 429 too
    # (BATCH of them at most); nothing sent after it may be refused.
    assert c.sent_429 >= 1, "the scenario must make the daemon meet the venue's real budget"
    assert c.sent_429 - c.sent_429_in_flight <= 1, "went over budget again after the first 429"
    assert c.sent_418 == 0 and c.requests_during_ban == 0


async def stored_series(dsn: str) -> int:
    """How many of the configured series have at least one stored bar."""
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT symbol, timeframe FROM candles) s"
        )
        return n
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_kill_9_and_restart_lose_and_duplicate_nothing(tsdb_dsn: str, tmp_path: Path) -> None:
    """kill -9 mid-run, restart: the reconnect backfill and one heal pass
    bring back whatever was only in memory; nothing is duplicated."""
    depth = {"1s": timedelta(hours=1), "1m": timedelta(hours=6)}
    sim = SimExchange(parse_scenario(scenario(), clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    try:
        body = venue_toml("binance", port)
        for tf, d in depth.items():
            body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{d.seconds // 3600}h"')
        config = write_config(tmp_path, body + HEALING)
        started = clock.now()
        async with running_daemon(config, tsdb_dsn, tmp_path / "first.log") as proc:
            asked = await first_request(sim)

            # Mid-run: something of every series is stored (and more in flight).
            async def all_stored() -> bool:
                return await stored_series(tsdb_dsn) == len(KEYS)

            await until(all_stored, BACKFILL_BOUND_S, "bars of every series")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed = clock.now()
        await asyncio.sleep(5)  # bars close while nothing runs
        second = tmp_path / "second.log"
        async with running_daemon(config, tsdb_dsn, second) as proc:
            await logged(second, "heal cycle done", within=BACKFILL_BOUND_S, proc=proc)
            # The restart catches up from the newest stored bar: holes the kill
            # left before it are the heal pass's, which judges settled bars only.
            while clock.now() < killed + SETTLE + timedelta(seconds=1):
                await asyncio.sleep(0.2)
            stopped = clock.now()
            assert await stop(proc) == 0
        await repair_pass(config, tsdb_dsn, tmp_path)
        await assert_store_equals_truth(sim, tsdb_dsn, started, stopped, lookback=depth,
                                        asked=asked)  # fmt: skip
        await assert_series_ok(tsdb_dsn, KEYS)
    finally:
        await sim.stop()
