"""A database outage loses nothing: the writer keeps accepting candles, spills
what does not fit in memory to the disk spool, and writes everything back, in
order, once the database returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled.store.cluster import PostgresCluster
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.spool import Spool
from candled.store.writer import CandleStore, CandleWriter, WriteResult
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests import pg
from tests.daemon_proc import (
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)
from tests.pg import free_port
from tests.test_store import make_candles


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: it is stopped and started mid-test."""
    with pg.own_cluster("outage") as cluster:
        yield cluster


@pytest.mark.timeout(180)
async def test_outage_spills_to_disk_and_replays(
    own_cluster: PostgresCluster, tmp_path: Path
) -> None:
    db = await Database.connect(own_cluster.dsn, min_size=0)
    async with db.pool.acquire() as conn:
        await migrate(conn)
    spool = Spool(tmp_path / "spool")
    writer = CandleWriter(CandleStore(db.pool), batch_size=100, max_age=0.05, capacity=300,
                          retry_cap_s=0.5, spool=spool)  # fmt: skip
    candles = make_candles(5, 400)  # 2,000 candles, far more than the buffer holds
    try:
        async with asyncio.timeout(150), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await writer.put(candles[:200])
            await writer.drain()
            await asyncio.to_thread(own_cluster.stop)
            # Intake never blocks for long: what does not fit goes to disk.
            async with asyncio.timeout(30):
                for i in range(200, 2000, 50):
                    await writer.put(candles[i : i + 50])
            assert writer.failing is not None
            assert spool.pending_candles > 0 and writer.spooled == spool.pending_candles
            await asyncio.to_thread(own_cluster.start)
            await writer.drain()  # everything put, spooled or not, is written
            runner.cancel()
        assert writer.pending == 0 and spool.pending_batches == 0
        assert await writer.close() == WriteResult()
        conn = await asyncpg.connect(own_cluster.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM candle_data") == 2000
        finally:
            await conn.close()
        # Replayed means acked: the spool's files are gone from the disk.
        assert spool.files == 0 and not list((tmp_path / "spool").glob("spool-*.bin"))
    finally:
        spool.close()
        await db.close()


async def test_shutdown_during_outage_spools_the_buffer(
    own_cluster: PostgresCluster, tmp_path: Path
) -> None:
    db = await Database.connect(own_cluster.dsn, min_size=0)
    async with db.pool.acquire() as conn:
        await migrate(conn)
    candles = make_candles(2, 100)
    with Spool(tmp_path / "spool") as spool:
        writer = CandleWriter(CandleStore(db.pool), batch_size=50, spool=spool)
        await writer.put(candles)
        await asyncio.to_thread(own_cluster.stop)
        await writer.close()  # the database is gone: to disk, nothing lost
        assert writer.pending == 0 and spool.pending_candles == 200
    await asyncio.to_thread(own_cluster.start)
    # A restarted daemon finds the spool and writes it back.
    with Spool(tmp_path / "spool") as spool:
        writer = CandleWriter(CandleStore(db.pool), spool=spool, retry_cap_s=0.5)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            while spool.pending_batches:
                await asyncio.sleep(0.05)
            runner.cancel()
    assert await db.pool.fetchval("SELECT count(*) FROM candle_data") == 200
    await db.close()


@pytest.mark.timeout(180)
async def test_health_is_503_while_the_database_is_down(
    own_cluster: PostgresCluster, tmp_path: Path
) -> None:
    sim = SimExchange(parse_scenario({"symbols": [{"symbol": "AAAUSDT", "listed": "-1d"}]},
                                     clock.now()))  # fmt: skip
    _, sim_port = await sim.start("127.0.0.1", 0)
    hport = free_port()
    body = venue_toml("binance", sim_port) + series_toml(
        "binance", ["AAAUSDT"], ["1s"], lookback='"10m"'
    )
    config = write_config(tmp_path, body, health_port=hport)
    url = f"http://127.0.0.1:{hport}/health"
    try:
        async with (
            running_daemon(config, own_cluster.dsn, tmp_path / "daemon.log") as proc,
            aiohttp.ClientSession() as session,
        ):

            async def status_is(code: int) -> dict[str, Any] | None:
                try:
                    async with session.get(url) as r:
                        return await r.json() if r.status == code else None  # type: ignore[no-any-return]
                except aiohttp.ClientConnectionError:
                    return None

            await wait_until(lambda: status_is(200))
            await asyncio.to_thread(own_cluster.stop)
            down = await wait_until(lambda: status_is(503))
            assert down["status"] == "failing" and down["database"]["ok"] is False
            assert proc.returncode is None
            await asyncio.to_thread(own_cluster.start)
            back = await wait_until(lambda: status_is(200))
            assert back["database"]["ok"] is True
            assert await stop(proc) == 0
    finally:
        await sim.stop()
