"""What the end-to-end tests against the simulated Binance share: the
scenario, a daemon run against it, the store compared with its truth, and a
clock that starts the run early in a venue minute."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from candled import clock
from candled.domain import SeriesKey, Timeframe
from candled_sim.counters import SimCounters
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    Clock,
    pinned,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)
from tests.waiting import first_request, logged, until

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


def early_in_a_minute(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Run as if a venue minute (Binance's weight window) had just begun: the
    daemon and CLI processes started after this, the simulator given the
    returned clock and the test reading it all see the same instant, a second
    into a minute, instead of the test waiting up to a minute for one."""
    return pinned(clock.now().replace(second=1, microsecond=0), monkeypatch)


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


def config_body(port: int, depth: dict[str, timedelta], batch: int = 5) -> str:
    """The venue (5 s idle timeout) and SYMBOLS at `depth` per timeframe, healing as HEALING."""
    body = venue_toml("binance", port, batch=batch, idle_timeout='"5s"')
    for tf, d in depth.items():
        hours = d.days * 24 + d.seconds // 3600
        body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{hours}h"')
    return body + HEALING


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
    now: Clock = clock.now,
) -> Run:
    """Run the daemon (after `prelude(venue URL)`, if any) until its
    orchestrated backfill is done and audited (its first "heal cycle done"),
    and `also(sim counters)` holds; then `live_s` more seconds of live bars
    only, and SIGTERM. `now` is the clock of the simulator, the daemon and
    the returned instants (see `early_in_a_minute`)."""
    sim = SimExchange(parse_scenario(sim_scenario, now()), clock=now)
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
        started = now()
        async with running_daemon(config, dsn, log) as proc:
            asked = await first_request(sim, now=now)
            await logged(log, "heal cycle done", within=BACKFILL_BOUND_S, proc=proc)
            await until(lambda: also(sim.counters), BACKFILL_BOUND_S, "the faults to fire")
            await asyncio.sleep(live_s)  # bars that only the live stream brings
            assert proc.returncode is None, log.read_text()[-3000:]
            stopped = now()
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
