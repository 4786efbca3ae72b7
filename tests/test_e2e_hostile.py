"""End to end against a hostile or broken venue: the daemon process, the
simulated exchange misbehaving in every way it knows, and a real TimescaleDB.
Whatever the venue does, the store must equal its truth (nothing lost,
duplicated or quarantined), no request may go out during a ban, every broken
answer is counted, and the process stays up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candled import clock
from candled.domain import SeriesKey
from candled.gaps import SETTLE
from candled_sim.counters import SimCounters
from candled_sim.http import IN_FLIGHT_GRACE_S
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    compare_with_truth,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)
from tests.pg import free_port
from tests.test_e2e_collection import (
    BACKFILL_BOUND_S,
    HEALING,
    KEYS,
    SYMBOLS,
    assert_store_equals_truth,
    scenario,
)
from tests.waiting import assert_series_ok, first_request, logged, sim_requests, until

DEPTH = {"1s": timedelta(hours=2), "1m": timedelta(days=1)}
BAN_S = 60  # long enough for a second process to start and read it


async def caught_up(dsn: str, sim: SimExchange, asked: datetime) -> bool:
    """The daemon itself stored the whole compared window so far: from the
    lookback start it computed before its first request (`asked`) to the
    bars an audit now would judge settled (the heal pass after the stop is
    only the backstop for the newest ones)."""
    now = clock.now()
    conn = await asyncpg.connect(dsn)
    try:
        for symbol in SYMBOLS:
            for tf_text, depth in DEPTH.items():
                key = SeriesKey("binance", symbol, tf_text)
                genesis = sim.truth.genesis(key)
                assert genesis is not None
                lo = max(genesis, key.tf.floor(asked - depth))
                hi = key.tf.floor(now - SETTLE)
                if not (await compare_with_truth(conn, sim.truth, key, lo, hi)).equal:
                    return False
        return True
    finally:
        await conn.close()


def config_body(port: int, depth: dict[str, timedelta], batch: int = 5) -> str:
    body = venue_toml("binance", port, batch=batch, idle_timeout='"5s"')
    for tf, d in depth.items():
        hours = d.days * 24 + d.seconds // 3600
        body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{hours}h"')
    return body + HEALING


async def banned_until(dsn: str) -> datetime | None:
    conn = await asyncpg.connect(dsn)
    try:
        until: datetime | None = await conn.fetchval(
            "SELECT banned_until FROM venue_state WHERE venue = 'binance'"
        )
        return until
    except asyncpg.UndefinedTableError:
        return None  # not migrated yet
    finally:
        await conn.close()


async def malformed_counts(health_port: int) -> dict[str, float]:
    """The daemon's malformed-message counters by source, from /metrics."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{health_port}/metrics") as r,
    ):
        text = await r.text()
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "candled_malformed_messages"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def assert_nothing_quarantined(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT symbol, timeframe, ts, reason FROM quarantine LIMIT 5")
        assert not rows, f"valid bars quarantined: {rows}"
        # Foreign frames carried real bars of streams nobody asked for.
        assert (
            await conn.fetchval("SELECT count(*) FROM candles WHERE timeframe NOT IN ('1s', '1m')")
            == 0
        )
    finally:
        await conn.close()


async def provoke_a_ban_on_our_ip(url: str) -> None:
    """Another client on our IP spends the venue's budget and is told to wait
    (429) until the minute's end: the venue bans the next request from the IP,
    which will be ours. Early in a minute, so that the wait outlasts our
    start by far (the test fails, not hangs, if it did not)."""
    while clock.now().second >= 5:
        await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as other:
        while True:
            async with other.get(url + "/api/v3/ping") as r:
                if r.status == 429:
                    break
    await asyncio.sleep(IN_FLIGHT_GRACE_S + 0.2)  # our request could have known of the 429


def all_faults_fired(c: SimCounters, malformed: dict[str, float]) -> bool:
    """Every fault of the hostile scenario fired and every broken answer or
    frame was counted by the daemon."""
    return bool(
        c.html_errors and c.non_json and c.oversized_bodies and c.never_answered
        and c.truncated_bodies >= 2  # both kinds: broken JSON, and the connection cut
        and c.foreign_frames_sent and c.malformed_frames_sent and c.ws_mute
        and malformed.get("http", 0) > 0 and malformed.get("ws", 0) > 0
        and malformed.get("unknown_stream", 0) > 0
    )  # fmt: skip


@pytest.mark.timeout(900)
async def test_hostile_venue_loses_nothing_and_a_ban_outlives_kill_9(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    """REST answers broken in every way, foreign and malformed frames, mute
    connections; and a 418 ban met by one process holds the next one too."""
    faults = {
        "html_errors": {"every": 9, "statuses": [502, 403, 503]},
        "non_json": {"every": 11},
        "truncated_bodies": {"every": 7},
        "oversized_bodies": {"every": 13},  # past the daemon's default 32 MiB bound
        "never_answers": {"every": 30},  # the daemon's fetch timeout (30 s) ends the wait
        "malformed_frames": {"every": 40},
        "foreign_frames": {"every": 5},
        "ws_mute": {"every": 2},  # every other connection: open, and then nothing
        "ws_drop": {"every": "15s"},  # the connections that follow a mute one
    }
    data = scenario(faults, weight=600)
    data["rest"]["ban"] = f"{BAN_S}s"
    sim = SimExchange(parse_scenario(data, clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    health_port = free_port()
    try:
        # First process: one request at a time, so that the one the venue bans
        # has no company on the way that could not know of the ban.
        config = write_config(tmp_path, config_body(port, DEPTH, batch=1))
        await provoke_a_ban_on_our_ip(f"http://127.0.0.1:{port}")
        async with running_daemon(config, tsdb_dsn, tmp_path / "first.log") as proc:
            # Its first request is banned; the ban is persisted.
            async def persisted() -> bool:
                return await banned_until(tsdb_dsn) is not None

            await until(persisted, 120, "the ban persisted")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        ban_ends = await banned_until(tsdb_dsn)
        assert ban_ends is not None and ban_ends > clock.now()
        assert sim.counters.sent_418 == 1

        config = write_config(tmp_path, config_body(port, DEPTH), health_port=health_port)
        second = tmp_path / "second.log"
        started, before = clock.now(), sim_requests(sim)
        async with running_daemon(config, tsdb_dsn, second) as proc:
            # The second process reads the persisted ban and waits for its end.
            held = await logged(second, "venue ban still in force", within=BAN_S, proc=proc)
            assert datetime.fromisoformat(held["until"]) == ban_ends
            asked = await first_request(sim, within=BAN_S + 120, before=before)
            assert asked >= ban_ends
            # The daemon itself stored its whole lookback, and every fault
            # fired and was counted. (Not its first heal cycle: under this
            # venue the reconnect fetches keep the backfill queue from ever
            # being empty, which the heal loop waits for.)
            await until(lambda: caught_up(tsdb_dsn, sim, asked), BACKFILL_BOUND_S,
                        "the daemon's lookback", every=5)  # fmt: skip
            malformed: dict[str, float] = {}

            async def fired() -> bool:
                nonlocal malformed
                malformed = await malformed_counts(health_port)
                return all_faults_fired(sim.counters, malformed)

            await until(fired, BACKFILL_BOUND_S, "every fault to fire and be counted")
            assert proc.returncode is None, second.read_text()[-3000:]
            stopped = clock.now()
            assert await stop(proc) == 0
        second_log = second.read_text()
        assert "component crashed" not in second_log
        c = sim.counters
        assert c.requests_during_ban == 0 and c.sent_418 == 1
        await repair_pass(config, tsdb_dsn, tmp_path)
    finally:
        await sim.stop()

    # One heal pass (`candled repair`) ran after the stop, as the daemon's next
    # cycle would; an audit leaves the last 30 s to the next one.
    await assert_store_equals_truth(sim, tsdb_dsn, started, stopped, settle_s=35, lookback=DEPTH,
                                    asked=asked)  # fmt: skip
    await assert_series_ok(tsdb_dsn, KEYS)
    await assert_nothing_quarantined(tsdb_dsn)
    assert all_faults_fired(c, malformed), (c, malformed)
    assert c.requests_during_ban == 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@pytest.mark.timeout(600)
async def test_5xx_storm_is_waited_out_quietly_and_then_filled(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    """Every klines request fails for 80 s from the daemon's start: the daemon
    backs off (few requests, little CPU), then completes the data by itself."""
    storm_s, ramp_s = 80.0, 10.0
    depth = {"1s": timedelta(hours=1), "1m": timedelta(hours=6)}
    data = scenario({"http_storm": {"start": "+0s", "duration": f"{storm_s:g}s"}})
    storm_start = clock.now()
    sim = SimExchange(parse_scenario(data, storm_start))
    _, port = await sim.start("127.0.0.1", 0)
    try:
        config = write_config(tmp_path, config_body(port, depth))
        log = tmp_path / "daemon.log"
        started = clock.now()
        async with running_daemon(config, tsdb_dsn, log) as proc:
            # Measure once the daemon is up (imports, migrations), has met the
            # storm, and had `ramp_s` to back off.
            asked = await first_request(sim)
            await until(lambda: sim.counters.storm_errors > 0, 60, "the storm's first error")
            await asyncio.sleep(ramp_s)
            cpu0, wall0, storm0 = cpu_seconds(proc.pid), time.monotonic(), sim.counters.storm_errors
            storm_left = storm_s - (clock.now() - storm_start).total_seconds()
            assert storm_left - 2 >= 15, f"the daemon met the storm late: {storm_left:.0f} s left"
            await asyncio.sleep(storm_left - 2)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
            requests_per_s = (sim.counters.storm_errors - storm0) / (time.monotonic() - wall0)
            assert requests_per_s < 0.5, f"{requests_per_s:.2f} requests/s during the storm"
            assert cpu < 0.15, f"{cpu:.0%} of a core while waiting out the storm"
            # After the storm, by the daemon's own retries (no heal pass): its
            # orchestrated backfill done, and audited by its first heal cycle.
            await logged(log, "heal cycle done", within=BACKFILL_BOUND_S, proc=proc)
            stopped = clock.now()
            assert await stop(proc) == 0
        assert "component crashed" not in log.read_text()
        assert sim.counters.storm_errors > 0
    finally:
        await sim.stop()
    await assert_store_equals_truth(sim, tsdb_dsn, started, stopped, settle_s=5, lookback=depth,
                                    asked=asked)  # fmt: skip
    await assert_series_ok(tsdb_dsn, KEYS)
