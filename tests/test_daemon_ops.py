"""Operations, end to end with a real process: sd_notify READY/RELOADING/
STOPPING over a real socket, /health and /metrics over HTTP, SIGHUP reloads
(invalid: keep running; valid: apply only the difference), SIGTERM exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candled import clock
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    NotifyListener,
    SimRequest,
    record_requests,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)
from tests.pg import free_port
from tests.waiting import log_events


async def health(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, object]]:
    async with session.get(f"http://127.0.0.1:{port}/health") as r:
        return r.status, await r.json()


async def written(session: aiohttp.ClientSession, port: int) -> float:
    """candled_candles_written_total{result="inserted"}, via prometheus-client's own parser."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "candled_candles_written" in families, "candled_candles_written missing from /metrics"
    inserted = [
        s.value
        for s in families["candled_candles_written"].samples
        if s.name == "candled_candles_written_total" and s.labels == {"result": "inserted"}
    ]
    return float(inserted[0]) if inserted else 0.0  # nothing written yet: no labelled sample


async def gauge(
    session: aiohttp.ClientSession, port: int, name: str, **labels: str
) -> float | None:
    """The value of the sample `name{labels}` on /metrics (None: no such sample)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


@pytest.mark.timeout(240)
async def test_notify_health_reload_and_stop(tsdb_dsn: str, tmp_path: Path) -> None:
    sim = SimExchange(parse_scenario({"seed": 3, "symbols": [
        {"symbol": s, "listed": "-1d"} for s in ("AAAUSDT", "BBBUSDT", "CCCUSDT")
    ]}, clock.now()))  # fmt: skip
    _, sim_port = await sim.start("127.0.0.1", 0)
    hport = free_port()
    venue = venue_toml("binance", sim_port)

    def config(symbols: list[str], extra: str = "") -> Path:
        body = venue + series_toml("binance", symbols, ["1s"], lookback='"10m"') + extra
        return write_config(tmp_path, body, health_port=hport)

    path = config(["AAAUSDT", "BBBUSDT"])
    notify = NotifyListener(tmp_path / "notify")
    os.environ["NOTIFY_SOCKET"] = str(notify.path)
    os.environ["WATCHDOG_USEC"] = "1000000"  # pings every 0.5 s
    # trust auth ignores the password; it must still appear nowhere.
    secret = "s3cret-pw-4711"
    dsn = tsdb_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    assert secret in dsn
    try:
        async with running_daemon(path, dsn, tmp_path / "daemon.log") as proc, \
                aiohttp.ClientSession() as session:  # fmt: skip
            ready = await notify.wait_for("READY=1")
            assert any(f.startswith("STATUS=") for f in ready.split("\n"))
            # READY only after the database is reachable and migrated.
            conn = await asyncpg.connect(tsdb_dsn)
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 3

            async def connected() -> dict[str, object] | None:
                status, doc = await health(session, hport)
                venues = doc["venues"]
                assert isinstance(venues, list)
                return doc if status == 200 and venues[0]["ws_connected"] else None

            doc = await wait_until(connected)
            assert doc["database"]["ok"] is True  # type: ignore[index]
            assert doc["database"]["license"] in ("apache", "timescale")  # type: ignore[index]
            assert doc["config"]["last_reload"] == "ok"  # type: ignore[index]
            metrics_before = await written(session, hport)
            await notify.wait_for("WATCHDOG=1", within=5)

            # An invalid config: keep running on the old one, say why.
            path.write_text(path.read_text().replace('timeframes = ["1s"]', 'timeframes = ["7s"]'))
            connections = sim.counters.ws_connections
            proc.send_signal(signal.SIGHUP)
            await notify.wait_for("RELOADING=1")
            await notify.wait_for("READY=1")
            status, doc = await health(session, hport)
            assert status == 200 and doc["status"] == "degraded"
            assert "series[0].timeframes[0]" in doc["config"]["last_reload"]  # type: ignore[index]
            assert proc.returncode is None
            assert await gauge(session, hport, "candled_config_last_reload_success") == 0
            assert await gauge(session, hport, "candled_database_up") == 1
            bbb = {"venue": "binance", "symbol": "BBBUSDT", "timeframe": "1s"}

            async def bbb_lag() -> bool:
                return await gauge(session, hport, "candled_series_lag_seconds", **bbb) is not None

            await wait_until(bbb_lag, within=30)  # the gauges refresh every 10 s

            # A valid one: CCC added, BBB removed, AAA untouched on its connection.
            config(["AAAUSDT", "CCCUSDT"])
            proc.send_signal(signal.SIGHUP)
            reloading = await notify.wait_for("RELOADING=1")
            assert any(f.startswith("MONOTONIC_USEC=") for f in reloading.split("\n"))
            await notify.wait_for("READY=1")
            status, doc = await health(session, hport)
            assert doc["config"]["last_reload"] == "ok"  # type: ignore[index]
            assert {s["symbol"] for s in doc["series"]} == {"AAAUSDT", "CCCUSDT"}  # type: ignore[attr-defined,index]
            assert await gauge(session, hport, "candled_config_last_reload_success") == 1

            async def bbb_gone() -> bool:
                # A removed series loses its gauges at the next refresh (no alert for it).
                return await gauge(session, hport, "candled_series_lag_seconds", **bbb) is None

            await wait_until(bbb_gone, within=30)
            for status in ("OK", "DEGRADED", "STALE", "MISSING"):
                labels = {**bbb, "status": status}
                assert await gauge(session, hport, "candled_series_status", **labels) is None
            ccc = {"venue": "binance", "symbol": "CCCUSDT", "timeframe": "1s"}
            ccc_status = [await gauge(session, hport, "candled_series_status", **ccc, status=st)
                          for st in ("OK", "DEGRADED", "STALE", "MISSING")]  # fmt: skip
            assert sorted(ccc_status) == [0, 0, 0, 1], ccc_status  # one status at a time

            async def ccc_live() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM candles WHERE symbol = 'CCCUSDT' AND ts > $1",
                    clock.now() - timedelta(seconds=5),
                )
                return bool(n)

            await wait_until(ccc_live)
            assert await written(session, hport) > metrics_before  # counters move
            assert sim.counters.ws_connections == connections, "reload reconnected the stream"
            bbb_before = await conn.fetchval("SELECT max(ts) FROM candles WHERE symbol = 'BBBUSDT'")
            aaa_before = await conn.fetchval("SELECT max(ts) FROM candles WHERE symbol = 'AAAUSDT'")

            async def aaa_streamed_3_more() -> bool:
                # AAA's stream goes on: three more bars, and BBB's would have come too.
                last = await conn.fetchval("SELECT max(ts) FROM candles WHERE symbol = 'AAAUSDT'")
                return bool(last >= aaa_before + timedelta(seconds=3))

            await wait_until(aaa_streamed_3_more)
            assert (
                await conn.fetchval("SELECT max(ts) FROM candles WHERE symbol = 'BBBUSDT'")
                == bbb_before
            )
            await conn.close()

            assert await stop(proc, within=30) == 0
            assert any("STOPPING=1" in m for m in notify.messages) or await notify.wait_for(
                "STOPPING=1", within=5
            )
        log = (tmp_path / "daemon.log").read_text()
        assert '"event": "stopped"' in log
        assert secret not in log and secret not in json.dumps(doc)
        # The order systemd expects, with watchdog pings in between.
        kinds = [m.split("\n")[0] for m in notify.messages if not m.startswith("STATUS=")]
        firsts = [k for i, k in enumerate(kinds) if k != "WATCHDOG=1" or kinds[i - 1] != k]
        assert firsts[0] == "READY=1" and firsts[-1] == "STOPPING=1"
        assert "RELOADING=1" in firsts and "WATCHDOG=1" in firsts
        i = firsts.index("RELOADING=1")
        assert firsts[i + 1 : i + 2] == ["READY=1"] or firsts[i + 1 : i + 3] == [
            "WATCHDOG=1",
            "READY=1",
        ]
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        notify.close()
        os.environ.pop("WATCHDOG_USEC", None)
        await sim.stop()


@pytest.mark.timeout(120)
async def test_restart_during_a_ban_sends_nothing_until_it_ends(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    sim = SimExchange(parse_scenario({"symbols": [{"symbol": "AAAUSDT", "listed": "-1h"}]},
                                     clock.now()))  # fmt: skip
    _, sim_port = await sim.start("127.0.0.1", 0)
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        from candled.store.migrations import migrate

        await migrate(conn)

        async def ban_for_8_more_seconds() -> None:
            """An earlier run was banned (418) until 8 s from now: kept so until
            the daemon has read it, however long its start takes."""
            await conn.execute(
                """INSERT INTO venue_state (venue, banned_until) VALUES ('binance', $1)
                   ON CONFLICT (venue) DO UPDATE SET banned_until = excluded.banned_until""",
                clock.now() + timedelta(seconds=8),
            )

        await ban_for_8_more_seconds()
        body = venue_toml("binance", sim_port) + series_toml(
            "binance", ["AAAUSDT"], ["1m"], lookback='"1h"', live="false"
        )
        config = write_config(tmp_path, body, health_port=free_port())
        log = tmp_path / "daemon.log"
        async with running_daemon(config, tsdb_dsn, log) as proc:

            def requests() -> int:
                return sum(sim.counters.requests_by_status.values())

            while not (held := log_events(log, "venue ban still in force")):
                assert proc.returncode is None, log.read_text()[-3000:]
                await ban_for_8_more_seconds()
                await asyncio.sleep(0.5)
            ban_ends = datetime.fromisoformat(held[0]["until"])  # the end the daemon read
            assert ban_ends > clock.now()
            while clock.now() < ban_ends - timedelta(seconds=1):
                assert requests() == 0, "a request went out during the ban"
                await asyncio.sleep(0.2)
            await wait_until(lambda: asyncio.sleep(0, requests() > 0), within=30)
            assert await stop(proc) == 0
        assert sim.counters.requests_during_ban == 0 and sim.counters.sent_418 == 0
    finally:
        await conn.close()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_a_venue_started_while_the_database_is_down_fetches_then_honours_the_ban(
    tmp_path: Path,
) -> None:
    """The venue runtime starts during an outage: it fetches (no crash loop on
    the ban lookup); once the database answers, the ban an earlier run
    persisted holds every request until it ends."""
    from candled.backfill import BackfillJob
    from candled.config import SeriesSpec, VenueConfig
    from candled.domain import DataProfile, SeriesKey
    from candled.store.database import Database
    from candled.store.migrations import migrate
    from candled.store.spool import Spool
    from candled.store.writer import CandleStore, CandleWriter
    from candled.venue_runtime import VenueRuntime
    from tests import pg

    sim = SimExchange(parse_scenario({"symbols": [{"symbol": "AAAUSDT", "listed": "-2d"}]},
                                     clock.now()))  # fmt: skip
    answered = record_requests(sim, clock.now)
    _, sim_port = await sim.start("127.0.0.1", 0)
    key = SeriesKey("binance", "AAAUSDT", "1m")
    venue = VenueConfig("binance", "binance", f"http://127.0.0.1:{sim_port}",
                        f"ws://127.0.0.1:{sim_port}")  # fmt: skip
    spec = SeriesSpec(key, DataProfile.CRYPTO, "", live=False, lookback=timedelta(hours=6))

    def requests() -> int:
        return sum(sim.counters.requests_by_status.values())

    try:
        with pg.own_cluster("venue-ban") as cluster:
            db = await Database.connect(cluster.dsn, min_size=0)
            async with db.pool.acquire() as conn:
                await migrate(conn)
                ban_ends = await conn.fetchval(
                    "INSERT INTO venue_state (venue, banned_until) VALUES ('binance', $1)"
                    " RETURNING banned_until",
                    clock.now() + timedelta(seconds=40),
                )
            await asyncio.to_thread(cluster.stop)
            spool = Spool(tmp_path / "spool")
            writer = CandleWriter(CandleStore(db.pool), spool=spool, retry_cap_s=0.5)
            runtime = VenueRuntime(venue, [spec], db, writer)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(writer.run()), tg.create_task(runtime.run())]
                # Down: the ban is unknown, requests go ahead.
                await wait_until(lambda: asyncio.sleep(0, requests() > 0), within=30)
                assert not runtime.throttle.banned
                await asyncio.to_thread(cluster.start)
                # Back: the persisted ban is found and held.
                await wait_until(lambda: asyncio.sleep(0, runtime.throttle.banned), within=30)
                assert runtime.throttle.banned_until == ban_ends.timestamp()
                # A job for a window no other asks for (the lookback is 6 h):
                # its requests are told apart by their startTime, whatever was
                # already past the throttle when the ban was found.
                now = clock.now()
                job = BackfillJob(key, now - timedelta(days=1), now - timedelta(hours=12), "test")
                runtime.backfiller.submit(job)
                lo, hi = (int(t.timestamp() * 1000) for t in (job.start, job.end))

                def of_the_job() -> list[SimRequest]:
                    return [r for r in answered
                            if lo <= int(r.params.get("startTime", -1)) < hi]  # fmt: skip

                await wait_until(lambda: asyncio.sleep(0, of_the_job()), within=90)
                first = min(r.at for r in of_the_job())
                assert first >= ban_ends - timedelta(seconds=1), "a request went out during the ban"
                assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
                for t in tasks:
                    t.cancel()
            spool.close()
            await db.close()
    finally:
        await sim.stop()
