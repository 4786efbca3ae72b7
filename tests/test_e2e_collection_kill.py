"""End to end: kill -9 mid-run and restart, against the simulated exchange and
a real TimescaleDB; the store must equal the simulator's truth."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from candled import clock
from candled.gaps import SETTLE
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.binance_e2e import (
    BACKFILL_BOUND_S,
    HEALING,
    KEYS,
    SYMBOLS,
    assert_store_equals_truth,
    scenario,
)
from tests.daemon_proc import (
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)
from tests.waiting import assert_series_ok, first_request, logged, until


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
