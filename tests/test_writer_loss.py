"""The writer's loss paths: revisions stay in arrival order whichever way
they travel (memory, spool, restart), a hung database counts as failing, a
failed batch is retried on the writer's own clock, shutdown spools what it
cannot write, and a full spool makes producers wait instead of crashing.

A TCP proxy in front of the real PostgreSQL plays the database that is down
(connections reset, new ones closed) or hung (nothing answers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from candled import metrics
from candled.app import Daemon
from candled.config import load_config
from candled.domain import Candle
from candled.health import HealthFacts, assess
from candled.store import database
from candled.store.spool import Spool
from candled.store.writer import CandleStore, CandleWriter
from candled.supervisor import Supervisor
from tests.test_store import make_candles


class Proxy:
    """A TCP proxy that can make the database behind it down or hung."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self._upstream = (parts.hostname, parts.port)
        self._dsn = parts
        self._flowing = asyncio.Event()  # cleared: hung, bytes are held
        self._flowing.set()
        self._down = False
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def dsn(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._dsn.netloc.rsplit(":", 1)[0] + f":{port}"
        return urlunsplit(self._dsn._replace(netloc=netloc))

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.down()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def down(self) -> None:
        """Reset every connection; close new ones at once."""
        self._down = True
        self._flowing.set()
        for w in self._open:
            w.close()

    def hang(self) -> None:
        """Keep every connection open and hold every byte."""
        self._flowing.clear()

    def up(self) -> None:
        self._down = False
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            await self._flowing.wait()
            if self._down:
                return
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            self._open.add(up_writer)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_writer, writer))
                tg.create_task(self._pump(up_reader, writer, up_writer))
        except OSError:
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                if self._down:
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            # One side gone: the whole connection goes, as with a dead server.
            self._open.discard(dst)
            dst.close()
            other.close()


async def until(check: Callable[[], bool | Awaitable[bool]], within: float = 30) -> None:
    """Wait until `check` holds; `within` only stops a hang."""
    async with asyncio.timeout(within):
        while True:
            got = check()
            if await got if not isinstance(got, bool) else got:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def proxy(migrated: str) -> AsyncIterator[Proxy]:
    async with Proxy(migrated) as p:
        yield p


@pytest.fixture
async def pool(proxy: Proxy) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(proxy.dsn, min_size=0, max_size=4)
    try:
        yield p
    finally:
        p.terminate()


async def stored(dsn: str) -> dict[tuple[str, str, object], float]:
    """close by (venue, symbol, ts), read past the proxy."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT venue, symbol, ts, close FROM candles")
    finally:
        await conn.close()
    return {(r["venue"], r["symbol"], r["ts"]): r["close"] for r in rows}


def revised(candle: Candle, close: float) -> Candle:
    return replace(candle, close=close, high=max(candle.high, close))


def writer_for(pool: asyncpg.Pool, spool: Spool | None, timeout_s: float = 5.0) -> CandleWriter:
    return CandleWriter(CandleStore(pool, timeout_s=timeout_s), batch_size=50, max_age=0.01,
                        capacity=200, retry_cap_s=0.2, spool=spool)  # fmt: skip


async def prime(writer: CandleWriter) -> None:
    """One write while the database is up (caches the series ids)."""
    await writer.put(make_candles(1, 1, venue="prime"))
    await writer.drain()


# --- item 4: the newest revision wins ------------------------------------------


async def test_a_revision_spooled_after_its_earlier_one_wins(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    """rev 1 waits in memory, rev 2 (later) goes to the spool: rev 2 is stored."""
    first, *filler = make_candles(1, 400)
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await prime(writer)
            proxy.down()
            await writer.put([revised(first, 100.0), *filler[:150]])
            await until(lambda: writer.failing is not None)
            await writer.put(filler[150:])
            await writer.put([revised(first, 101.0)])
            assert spool.pending_candles > 0
            proxy.up()
            await until(lambda: spool.pending_batches == 0 and writer.pending == 0)
            await writer.drain()
            runner.cancel()
    got = await stored(migrated)
    assert got[(first.series.venue, first.series.symbol, first.ts)] == 101.0
    assert len(got) == 401


async def test_shutdown_puts_the_buffer_ahead_of_newer_spooled_revisions(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    """Down at shutdown with rev 1 in memory and rev 2 on disk: after a
    restart rev 2 is stored, not rev 1."""
    first, *filler = make_candles(1, 400)
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await prime(writer)
            proxy.down()
            await writer.put([revised(first, 100.0), *filler[:150]])
            await until(lambda: writer.failing is not None)
            await writer.put([*filler[150:], revised(first, 101.0)])
            runner.cancel()
        await writer.flush()
        assert writer.pending == 0
    proxy.up()
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await until(lambda: spool.pending_batches == 0)
            runner.cancel()
    got = await stored(migrated)
    assert got[(first.series.venue, first.series.symbol, first.ts)] == 101.0
    assert len(got) == 401


async def test_after_a_restart_new_revisions_go_behind_the_spool(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    """rev 1 spooled by an earlier run; rev 2 arrives after the restart
    while the database is still down: rev 2 is stored."""
    (first,) = make_candles(1, 1)
    with Spool(tmp_path / "spool") as spool:
        spool.append([revised(first, 100.0)])
    proxy.down()
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await writer.put([revised(first, 101.0)])
            await until(lambda: writer.failing is not None)
            proxy.up()
            await writer.drain()
            await until(lambda: spool.pending_batches == 0)
            runner.cancel()
    assert (await stored(migrated))[(first.series.venue, first.series.symbol, first.ts)] == 101.0


# --- item 5: a hung database ---------------------------------------------------


async def test_a_hung_write_counts_as_failing_and_spills(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    candles = make_candles(2, 50)
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool, timeout_s=1.0)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await prime(writer)
            proxy.hang()
            await writer.put(candles)
            await until(lambda: writer.failing is not None, within=10)
            assert "TimeoutError" in writer.failing
            await until(lambda: spool.pending_candles == len(candles), within=10)
            proxy.up()
            await writer.drain()
            runner.cancel()
    assert len(await stored(migrated)) == len(candles) + 1


@pytest.mark.timeout(120)
async def test_shutdown_with_the_database_hung_spools_the_buffer(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    """`Daemon._shutdown` while every query hangs: it returns within
    `shutdown_timeout`, and every buffered candle is on disk."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\nshutdown_timeout = "3s"\n')
    daemon = Daemon(load_config(config_file))
    candles = make_candles(3, 100)
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            sup = Supervisor(tg)
            sup.start("writer", writer.run)
            await prime(writer)
            proxy.hang()
            await writer.put(candles)
            started = time.monotonic()
            await daemon._shutdown(sup, writer)
            took = time.monotonic() - started
        assert took < 3.5
        assert writer.pending == 0
        assert spool.pending_candles == len(candles)
    proxy.up()
    with Spool(tmp_path / "spool") as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await until(lambda: spool.pending_batches == 0)
            runner.cancel()
    assert len(await stored(migrated)) == len(candles) + 1


# --- item 6: the writer's own clock ---------------------------------------------


async def test_a_failed_write_is_reported_and_retried_without_new_candles(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str
) -> None:
    """No spool: the failed batch waits in memory, `failing` says so at
    once, and it is written when the database returns, with no new input."""
    candles = make_candles(1, 20)
    writer = writer_for(pool, None)
    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        runner = tg.create_task(writer.run())
        await prime(writer)
        proxy.down()
        await writer.put(candles)
        await until(lambda: writer.failing is not None, within=10)
        proxy.up()
        await writer.drain()
        assert writer.failing is None
        runner.cancel()
    assert len(await stored(migrated)) == len(candles) + 1


# --- item 7: a full spool -------------------------------------------------------


def _spool_full_waits() -> float:
    return metrics.REGISTRY.get_sample_value("candled_spool_full_waits_total") or 0.0


def _health(writer: CandleWriter, spool: Spool) -> dict[str, object]:
    from datetime import UTC, datetime

    return assess(HealthFacts(
        uptime_s=1.0, database_ok=True, database_error=None, timescaledb=None, license=None,
        config_loaded_at=datetime.now(UTC), last_reload="ok", venues=[], series=[],
        crash_looping=[], writer_failing=writer.failing, spooled_candles=spool.pending_candles,
    ))  # fmt: skip


async def test_a_full_spool_makes_producers_wait(
    proxy: Proxy, pool: asyncpg.Pool, migrated: str, tmp_path: Path
) -> None:
    candles = make_candles(4, 250)
    waits_before = _spool_full_waits()
    with Spool(tmp_path / "spool", rotate_bytes=4 << 10, max_bytes=16 << 10) as spool:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await prime(writer)
            proxy.down()

            async def produce() -> None:
                for i in range(0, len(candles), 50):
                    await writer.put(candles[i : i + 50])

            producer = tg.create_task(produce())
            await until(lambda: _spool_full_waits() > waits_before or producer.done())
            assert not producer.done()
            assert writer.failing is not None and "spool full" in writer.failing
            doc = _health(writer, spool)
            assert doc["status"] == "failing"
            assert any("spool full" in r for r in doc["reasons"]), doc  # type: ignore[attr-defined]
            proxy.up()
            await producer
            await writer.drain()
            await until(lambda: spool.pending_batches == 0)
            assert writer.failing is None
            runner.cancel()
    assert len(await stored(migrated)) == len(candles) + 1


async def test_any_statement_on_a_hung_database_is_bounded(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the writer: every pool the daemon opens bounds each statement,
    so a healer or health query on a hung server ends in an error."""
    monkeypatch.setattr(database, "STATEMENT_TIMEOUT_S", 0.5)
    db = await database.Database.connect(proxy.dsn)
    try:
        proxy.hang()
        async with asyncio.timeout(30):  # only against a hang of the test itself
            with pytest.raises(database.UNAVAILABLE):
                await db.pool.fetchval("SELECT 1")
    finally:
        proxy.up()
        db.pool.terminate()
