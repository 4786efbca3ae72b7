"""End to end: the daemon process through database outages, on a TimescaleDB
cluster of the test's own (stopped and started mid-run), against the
simulated exchange. Nothing collected during an outage may be lost or stored
twice, not even when the daemon is killed while candles wait in its spool."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled.domain import Candle
from candled.store.cluster import PostgresCluster
from candled.store.spool import Spool
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests import pg
from tests.binance_e2e import HEALING, SYMBOLS, assert_store_equals_truth, scenario
from tests.daemon_proc import (
    NotifyListener,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)
from tests.pg import free_port
from tests.waiting import first_request

# Shallow enough for two shared CPUs, deep enough that the backfill outlasts
# the first seconds of the run.
DEPTH = {"1s": timedelta(hours=1), "1m": timedelta(hours=6)}
OUTAGE_S = 20


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with pg.own_cluster("db-outage") as own:
        yield own


def config_for(tmp_path: Path, sim_port: int, depth: dict[str, timedelta]) -> tuple[Path, int]:
    """The daemon's config for the simulator on `sim_port`, and its health port."""
    body = venue_toml("binance", sim_port)
    for tf, d in depth.items():
        hours = int(d.total_seconds() // 3600)
        body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{hours}h"')
    health_port = free_port()
    return write_config(tmp_path, body + HEALING, health_port=health_port), health_port


async def health(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, document) of /health, or None while nothing answers."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/health") as r:
            return r.status, await r.json()
    except aiohttp.ClientConnectionError:
        return None


@pytest.mark.timeout(150)
async def test_database_outage_mid_run_loses_and_duplicates_nothing(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    # Streams dropped every 15 s: some reconnect while the database is down.
    faults = {"ws_drop": {"every": "15s"}}
    sim = SimExchange(parse_scenario(scenario(faults), clock.now()))
    _, sim_port = await sim.start("127.0.0.1", 0)
    config, hport = config_for(tmp_path, sim_port, DEPTH)
    try:
        started = clock.now()
        async with (
            running_daemon(config, cluster.dsn, tmp_path / "daemon.log") as proc,
            aiohttp.ClientSession() as session,
        ):

            async def status(code: int) -> dict[str, Any] | None:
                got = await health(session, hport)
                return got[1] if got is not None and got[0] == code else None

            asked = await first_request(sim)
            await wait_until(lambda: status(200))
            await asyncio.sleep(10)  # backfilling and streaming
            await asyncio.to_thread(cluster.stop)
            outage_started = asyncio.get_running_loop().time()
            down = await wait_until(lambda: status(503), within=15)
            # An unreachable store is `failing`, HTTP 503 (README, "Health and metrics").
            assert down["status"] == "failing" and down["database"]["ok"] is False
            assert any(r.startswith("database unreachable") for r in down["reasons"]), down
            # The process rides the outage out, reporting it all along.
            while asyncio.get_running_loop().time() - outage_started < OUTAGE_S:
                assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
                got = await health(session, hport)
                assert got is not None and got[0] == 503, got
                await asyncio.sleep(1)
            await asyncio.to_thread(cluster.start)  # same port: the pool finds it again
            back = await wait_until(lambda: status(200), within=30)
            assert back["database"]["ok"] is True
            await asyncio.sleep(15)  # streaming on after the outage
            assert proc.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
            stopped = clock.now()
            assert await stop(proc) == 0
        # A reconnect during the outage planned its hole from memory.
        log = (tmp_path / "daemon.log").read_text()
        assert "catching up from what was asked before" in log
        assert "could not plan the reconnect backfill" not in log
        await repair_pass(config, cluster.dsn, tmp_path)
        # Bars that closed in the last seconds may have been on their way
        # (a dropped stream's hole backfill) at the stop; the heal cycle
        # leaves the last 30 s to its next run.
        await assert_store_equals_truth(sim, cluster.dsn, started, stopped, settle_s=35,
                                        lookback=DEPTH, asked=asked)  # fmt: skip
    finally:
        await sim.stop()


def spooled_candles(spool_dir: Path) -> dict[tuple[str, str, str, datetime], Candle]:
    """Every candle in the spool (the daemon must not hold it), by key."""
    with Spool(spool_dir) as spool:
        return {(c.series.venue, c.series.symbol, c.series.timeframe, c.ts): c
                for _, batch in spool.replay() for c in batch}  # fmt: skip


@pytest.mark.timeout(150)
async def test_kill_9_with_candles_spooled_then_database_returns(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """kill -9 while the database is down and candles wait in the spool;
    restart while it is still down; bring it back: every spooled candle is
    in the store exactly once, with the spooled values."""
    # A day of 1s bars: the backfill is still putting candles when the
    # database stops, so a write fails and the writer moves its buffer, and
    # every later candle, to the spool.
    sim = SimExchange(parse_scenario(scenario(), clock.now()))
    _, sim_port = await sim.start("127.0.0.1", 0)
    config, hport = config_for(tmp_path, sim_port, {"1s": timedelta(days=1)})
    spool_dir = tmp_path / "state" / "spool"
    try:
        async with (
            running_daemon(config, cluster.dsn, tmp_path / "first.log") as proc,
            aiohttp.ClientSession() as session,
        ):
            await wait_until(lambda: health(session, hport))
            await asyncio.to_thread(cluster.stop)

            async def spool_has_records() -> bool:
                return any(f.stat().st_size for f in spool_dir.glob("spool-*.bin"))

            await wait_until(spool_has_records, within=60)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        spooled = spooled_candles(spool_dir)
        assert spooled
        async with running_daemon(config, cluster.dsn, tmp_path / "second.log") as proc:
            await asyncio.sleep(3)  # it starts while the database is still down
            assert proc.returncode is None, (tmp_path / "second.log").read_text()[-3000:]
            await asyncio.to_thread(cluster.start)

            async def spool_drained() -> bool:
                return not any(spool_dir.glob("spool-*.bin"))

            await wait_until(spool_drained, within=60)
            assert await stop(proc) == 0
        conn = await asyncpg.connect(cluster.dsn)
        try:
            rows = await conn.fetch(
                """SELECT c.venue, c.symbol, c.timeframe, c.ts, c.open, c.high, c.low, c.close,
                          c.volume, count(*) OVER (PARTITION BY c.venue, c.symbol, c.timeframe, c.ts) AS n
                   FROM candles c
                   JOIN unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                        AS s(venue, symbol, timeframe, ts)
                     ON (c.venue, c.symbol, c.timeframe, c.ts) = (s.venue, s.symbol, s.timeframe, s.ts)""",
                *map(list, zip(*spooled, strict=True)),
            )  # fmt: skip
        finally:
            await conn.close()
        stored = {(r["venue"], r["symbol"], r["timeframe"], r["ts"]): r for r in rows}
        missing = spooled.keys() - stored.keys()
        assert not missing, f"{len(missing)} of {len(spooled)} spooled candles not stored"
        assert all(r["n"] == 1 for r in rows), "a spooled candle is stored more than once"
        wrong = [k for k, c in spooled.items()
                 if tuple(stored[k])[4:9] != (c.open, c.high, c.low, c.close, c.volume)]  # fmt: skip
        assert not wrong, (
            f"{len(wrong)} candles differ from their spooled values, first {wrong[:3]}"
        )
    finally:
        await sim.stop()


@pytest.mark.timeout(60)
async def test_waits_for_an_unreachable_database_until_stopped(tmp_path: Path) -> None:
    """Started with the database down, the daemon waits for it (instead of
    exiting); SIGTERM ends the wait with exit 0."""
    config, _ = config_for(tmp_path, free_port(), DEPTH)
    log = tmp_path / "daemon.log"
    nothing_there = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    notify = NotifyListener(tmp_path / "notify")
    os.environ["NOTIFY_SOCKET"] = str(notify.path)
    try:
        async with running_daemon(config, nothing_there, log) as proc:

            async def waiting() -> bool:
                return log.read_text().count("database unreachable; waiting for it") >= 2

            await wait_until(waiting, within=30)
            # systemd hears that the start goes on, so its start timeout does not fire.
            message = await notify.wait_for("STATUS=waiting for the database", within=10)
            assert any(f.startswith("EXTEND_TIMEOUT_USEC=") for f in message.split("\n"))
            assert proc.returncode is None
            assert await stop(proc, within=5) == 0
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        notify.close()
    assert "stopped while waiting for the database" in log.read_text()
    assert not any("READY=1" in m.split("\n") for m in notify.messages)
