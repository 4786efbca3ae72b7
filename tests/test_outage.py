"""A database outage loses nothing: the writer keeps accepting candles, spills
what does not fit in memory to the disk spool, and writes everything back, in
order, once the database returns."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from daemon.store.cluster import PostgresCluster
from daemon.store.database import Database
from daemon.store.migrations import migrate
from daemon.store.spool import Spool
from daemon.store.writer import CandleStore, CandleWriter, WriteResult
from tests.pg import scratch_dir
from tests.test_store import make_candles


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: it is stopped and started mid-test."""
    with scratch_dir("outage") as base, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        # A fixed port: the pool must find the database again after a restart.
        cluster = PostgresCluster(base / "pg", port=port)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


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
            while spool.pending_batches or writer.pending:
                await asyncio.sleep(0.1)
            runner.cancel()
        assert await writer.flush() == WriteResult()
        conn = await asyncpg.connect(own_cluster.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM candle_data") == 2000
        finally:
            await conn.close()
        assert spool.files == 0 or spool.pending_batches == 0
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
        await writer.flush()  # the database is gone: to disk, nothing lost
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
