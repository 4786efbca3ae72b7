"""SIGHUP never ends the daemon: a config that cannot be read or decoded, or
a database that is down while the reload syncs the series, keeps the running
config, says why in /health and the log, and the process goes on. Whatever
ends the daemon, buffered candles are written or spooled first."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled.app import Daemon
from candled.config import load_config
from candled.domain import SeriesKey
from candled.store.cluster import PostgresCluster
from candled.store.spool import Spool
from candled.venue_runtime import VenueRuntime
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

AAA = SeriesKey("binance", "AAAUSDT", "1s")


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own: stopped mid-run."""
    with pg.own_cluster("reload") as own:
        yield own


async def started_sim() -> tuple[SimExchange, int]:
    sim = SimExchange(parse_scenario({"symbols": [
        {"symbol": s, "listed": "-1d"} for s in ("AAAUSDT", "BBBUSDT")
    ]}, clock.now()))  # fmt: skip
    _, port = await sim.start("127.0.0.1", 0)
    return sim, port


def body(sim_port: int, symbols: list[str], interval: str = '"15m"') -> str:
    """The config below [daemon]: live 1s bars of `symbols`."""
    return (f"[healing]\ninterval = {interval}\n" + venue_toml("binance", sim_port)
            + series_toml("binance", symbols, ["1s"], lookback='"5m"'))  # fmt: skip


async def health(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    """The /health document, or None while nothing answers."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/health") as r:
            doc: dict[str, Any] = await r.json()
            return doc
    except aiohttp.ClientConnectionError:
        return None


def symbols_of(doc: dict[str, Any]) -> set[str]:
    return {s["symbol"] for s in doc["series"]}


async def last_bar(session: aiohttp.ClientSession, port: int) -> datetime | None:
    doc = await health(session, port)
    last = doc and next((s["last_ts"] for s in doc["series"] if s["symbol"] == "AAAUSDT"), None)
    return datetime.fromisoformat(last) if last else None


async def still_streaming(session: aiohttp.ClientSession, port: int) -> None:
    """AAAUSDT's newest stored bar moves on: the running config still runs."""
    before = await wait_until(lambda: last_bar(session, port))

    async def moved() -> bool:
        last = await last_bar(session, port)
        return last is not None and last > before

    await wait_until(moved, within=30)


@pytest.mark.timeout(180)
async def test_a_config_that_cannot_be_read_keeps_the_running_one(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    sim, sim_port = await started_sim()
    hport = free_port()
    path = write_config(tmp_path, body(sim_port, ["AAAUSDT"]), health_port=hport)
    good = path.read_bytes()
    log = tmp_path / "daemon.log"
    try:
        async with running_daemon(path, tsdb_dsn, log) as proc, aiohttp.ClientSession() as session:
            await still_streaming(session, hport)
            # Each would add BBBUSDT, if it could be read.
            bad = {
                "series[0].symbols[1]": path.read_bytes().replace(b'"AAAUSDT"',
                                                                  b'"AAAUSDT", "BBB\xffUSDT"'),
                "healing.interval": write_config(
                    tmp_path, body(sim_port, ["AAAUSDT", "BBBUSDT"], '"999999999w"'),
                    health_port=hport,
                ).read_bytes(),
            }  # fmt: skip
            for key, text in bad.items():
                path.write_bytes(text)
                proc.send_signal(signal.SIGHUP)

                async def reported(key: str = key) -> dict[str, Any] | None:
                    assert proc.returncode is None, log.read_text()[-3000:]
                    doc = await health(session, hport)
                    return doc if doc and key in doc["config"]["last_reload"] else None

                doc = await wait_until(reported, within=30)
                assert proc.returncode is None
                assert any(r.startswith("last config reload failed") for r in doc["reasons"])
                assert symbols_of(doc) == {"AAAUSDT"}
                await still_streaming(session, hport)
            # A readable config still reloads.
            path.write_bytes(good.replace(b'"AAAUSDT"', b'"AAAUSDT", "BBBUSDT"'))
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> dict[str, Any] | None:
                doc = await health(session, hport)
                return doc if doc and doc["config"]["last_reload"] == "ok" else None

            assert symbols_of(await wait_until(reloaded, within=30)) == {"AAAUSDT", "BBBUSDT"}
            # A health address that cannot be bound: the rest applies (BBBUSDT
            # goes), /health stays where it was and says so.
            with socket.create_server(("127.0.0.1", 0)) as busy:
                write_config(tmp_path, body(sim_port, ["AAAUSDT"]),
                             health_port=busy.getsockname()[1])  # fmt: skip
                proc.send_signal(signal.SIGHUP)

                async def kept_address() -> dict[str, Any] | None:
                    assert proc.returncode is None, log.read_text()[-3000:]
                    doc = await health(session, hport)
                    return doc if doc and "health_listen" in doc["config"]["last_reload"] else None

                doc = await wait_until(kept_address, within=30)
            assert doc["config"]["last_reload"].startswith("applied, but daemon.health_listen")
            assert symbols_of(doc) == {"AAAUSDT"}
            await still_streaming(session, hport)
            assert await stop(proc) == 0
        text = log.read_text()
        assert text.count("config reload failed") == 2
        assert "unhandled errors" not in text and '"event": "stopped"' in text
    finally:
        await sim.stop()


@pytest.mark.timeout(180)
async def test_a_reload_while_the_database_is_down_keeps_running_and_loses_nothing(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    sim, sim_port = await started_sim()
    hport = free_port()
    path = write_config(tmp_path, body(sim_port, ["AAAUSDT"]), health_port=hport)
    log = tmp_path / "daemon.log"
    try:
        async with running_daemon(path, cluster.dsn, log) as proc, \
                aiohttp.ClientSession() as session:  # fmt: skip
            await still_streaming(session, hport)
            await asyncio.to_thread(cluster.stop)
            down_at = clock.now()
            # A valid config (BBBUSDT added) that needs the database to apply.
            write_config(tmp_path, body(sim_port, ["AAAUSDT", "BBBUSDT"]), health_port=hport)
            proc.send_signal(signal.SIGHUP)

            async def reported() -> dict[str, Any] | None:
                assert proc.returncode is None, log.read_text()[-3000:]
                doc = await health(session, hport)
                return doc if doc and doc["config"]["last_reload"] != "ok" else None

            doc = await wait_until(reported, within=60)
            assert "database" in doc["config"]["last_reload"], doc["config"]
            assert symbols_of(doc) == {"AAAUSDT"}, "the running config is kept"
            assert proc.returncode is None, log.read_text()[-3000:]
            # Live bars keep arriving, into the writer's buffer, for a while.
            await asyncio.sleep(max(0.0, 10 - (clock.now() - down_at).total_seconds()))
            stopped_at = clock.now()
            assert await stop(proc) == 0
        text = log.read_text()
        assert '"event": "stopped"' in text and "unhandled errors" not in text
        with Spool(tmp_path / "state" / "spool") as spool:
            spooled = {c.ts for _, batch in spool.replay() for c in batch if c.series == AAA}
        # Every bar closed during the outage was buffered, and is on disk now.
        expected = set()
        ts = AAA.tf.floor(down_at) + timedelta(seconds=2)
        while ts < stopped_at - timedelta(seconds=3):
            expected.add(ts)
            ts += timedelta(seconds=1)
        assert expected and not expected - spooled, sorted(expected - spooled)[:5]
    finally:
        await sim.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["serve loop", "task group child"])
async def test_an_error_that_ends_the_daemon_still_writes_the_buffer(
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An error that ends the daemon still writes (or spools) what the writer
    holds: one out of the serve loop (a reload that raises, standing for any
    bug), or a task of the daemon's group whose crash cancels the loop."""
    sim, sim_port = await started_sim()
    path = write_config(tmp_path, body(sim_port, ["AAAUSDT"]), health_port=free_port())
    daemon = Daemon(load_config(path, env={"CANDLED_DATABASE_URL": tsdb_dsn}))

    async def boom() -> None:
        raise RuntimeError("boom")

    conn = await asyncpg.connect(tsdb_dsn)
    try:
        async with asyncio.timeout(100):
            run = asyncio.create_task(daemon.run())
            await wait_until(lambda: asyncio.sleep(
                0, daemon._writer is not None and daemon._writer.totals.inserted > 0))  # fmt: skip
            writer, sup = daemon._writer, daemon._supervisor
            assert writer is not None and sup is not None
            # With its writing task stopped, the writer only buffers: what
            # reaches the store from here on is the exit's flush.
            await sup.stop("writer")
            held_from = AAA.tf.floor(clock.now()) + timedelta(seconds=1)
            await wait_until(lambda: asyncio.sleep(0, writer.pending >= 6))
            held_until = AAA.tf.floor(clock.now()) - timedelta(seconds=2)
            if where == "serve loop":
                monkeypatch.setattr(daemon, "reload", boom)
                daemon._on_hup()
            else:
                sup._tg.create_task(boom())  # not supervised: its crash ends the group
            with pytest.raises(BaseException, match=r"boom|TaskGroup"):
                await run
        stored = {r["ts"] for r in await conn.fetch(
            "SELECT ts FROM candles WHERE symbol = 'AAAUSDT' AND ts >= $1 AND ts < $2",
            held_from, held_until,
        )}  # fmt: skip
        held = {held_from + timedelta(seconds=i)
                for i in range(int((held_until - held_from).total_seconds()))}  # fmt: skip
        assert held and not held - stored, sorted(held - stored)
    finally:
        await conn.close()
        await sim.stop()


@pytest.mark.timeout(120)
async def test_a_venue_whose_update_fails_restarts_on_the_new_config(
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the config is applied, a venue that cannot take its new series
    in place (here: its update raises) is restarted from the new config, and
    /health says so."""
    sim, sim_port = await started_sim()
    path = write_config(tmp_path, body(sim_port, ["AAAUSDT"]), health_port=free_port())
    daemon = Daemon(load_config(path, env={"CANDLED_DATABASE_URL": tsdb_dsn}))

    async def refuse(self: VenueRuntime, specs: object) -> None:
        raise RuntimeError("resubscribe failed")

    conn = await asyncpg.connect(tsdb_dsn)
    try:
        async with asyncio.timeout(100):
            run = asyncio.create_task(daemon.run())
            await wait_until(lambda: asyncio.sleep(
                0, daemon._writer is not None and daemon._writer.totals.inserted > 0))  # fmt: skip
            before = daemon.runtimes["binance"]
            monkeypatch.setattr(VenueRuntime, "set_series", refuse)
            write_config(tmp_path, body(sim_port, ["AAAUSDT", "BBBUSDT"]), health_port=free_port())
            daemon._on_hup()
            await wait_until(lambda: asyncio.sleep(0, daemon.last_reload != "ok" or run.done()))
            assert not run.done(), run
            assert daemon.last_reload.startswith("applied, but venue binance restarted")
            assert "resubscribe failed" in daemon.last_reload
            runtime = daemon.runtimes["binance"]
            assert runtime is not before and set(runtime.series) == {
                AAA,
                SeriesKey("binance", "BBBUSDT", "1s"),
            }

            async def bbb_stored() -> bool:
                n = await conn.fetchval("SELECT count(*) FROM candles WHERE symbol = 'BBBUSDT'")
                return bool(n)

            await wait_until(bbb_stored, within=60)
            daemon._on_stop_signal()
            assert await run == 0
    finally:
        await conn.close()
        await sim.stop()


@pytest.mark.timeout(120)
async def test_a_stop_signal_ends_a_reload_waiting_on_the_database(
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during a reload that waits on a hung database still exits
    within `shutdown_timeout`, not after the reload's own bound."""
    sim, sim_port = await started_sim()
    path = write_config(tmp_path, 'shutdown_timeout = "3s"\n' + body(sim_port, ["AAAUSDT"]),
                        health_port=free_port())  # fmt: skip
    daemon = Daemon(load_config(path, env={"CANDLED_DATABASE_URL": tsdb_dsn}))
    waiting = asyncio.Event()

    async def hung(*args: object) -> None:
        waiting.set()
        await asyncio.Event().wait()  # the database never answers

    try:
        async with asyncio.timeout(100):
            run = asyncio.create_task(daemon.run())
            await wait_until(lambda: asyncio.sleep(
                0, daemon._writer is not None and daemon._writer.totals.inserted > 0))  # fmt: skip
            monkeypatch.setattr("candled.app.sync_configured", hung)
            daemon._on_hup()
            await waiting.wait()
            started = time.monotonic()
            daemon._on_stop_signal()
            assert await run == 0
            assert time.monotonic() - started < 3 + 1
    finally:
        await sim.stop()
