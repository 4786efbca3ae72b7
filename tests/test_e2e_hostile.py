"""End to end against a hostile or broken venue: the daemon process, the
simulated exchange misbehaving in every way it knows, and a real TimescaleDB.
Whatever the venue does, the store must equal its truth (nothing lost,
duplicated or quarantined), no request may go out during a ban, every broken
answer is counted, and the process stays up."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candled.domain import SeriesKey
from candled.gaps import SETTLE
from candled_sim.counters import SimCounters
from candled_sim.http import IN_FLIGHT_GRACE_S
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.binance_e2e import (
    BACKFILL_BOUND_S,
    KEYS,
    SYMBOLS,
    assert_store_equals_truth,
    config_body,
    early_in_a_minute,
    scenario,
)
from tests.daemon_proc import (
    Clock,
    compare_with_truth,
    repair_pass,
    running_daemon,
    stop,
    write_config,
)
from tests.pg import free_port
from tests.waiting import assert_series_ok, first_request, logged, sim_requests, until

DEPTH = {"1s": timedelta(hours=2), "1m": timedelta(days=1)}
# Long enough for the first process to be killed and a second one to start and
# read it (a few seconds; ten and more on a loaded machine), and no longer:
# the second process waits the ban out before it asks the venue anything.
BAN_S = 40


async def caught_up(dsn: str, sim: SimExchange, asked: datetime, now: Clock) -> bool:
    """The daemon itself stored the whole compared window so far: from the
    lookback start it computed before its first request (`asked`) to the
    bars an audit now would judge settled (the heal pass after the stop is
    only the backstop for the newest ones)."""
    settled = now() - SETTLE
    conn = await asyncpg.connect(dsn)
    try:
        for symbol in SYMBOLS:
            for tf_text, depth in DEPTH.items():
                key = SeriesKey("binance", symbol, tf_text)
                genesis = sim.truth.genesis(key)
                assert genesis is not None
                lo = max(genesis, key.tf.floor(asked - depth))
                hi = key.tf.floor(settled)
                if not (await compare_with_truth(conn, sim.truth, key, lo, hi)).equal:
                    return False
        return True
    finally:
        await conn.close()


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


async def provoke_a_ban_on_our_ip(url: str, now: Clock) -> None:
    """Another client on our IP spends the venue's budget and is told to wait
    (429) until the minute's end: the venue bans the next request from the IP,
    which will be ours. Early in a minute, so that the wait outlasts our
    start by far (the test fails, not hangs, if it did not)."""
    while now().second >= 5:
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
    tsdb_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    # A second into a venue minute (the clock shifted, not waited for): the
    # ban is provoked early in it.
    now = early_in_a_minute(monkeypatch)
    sim = SimExchange(parse_scenario(data, now()), clock=now)
    _, port = await sim.start("127.0.0.1", 0)
    health_port = free_port()
    try:
        # First process: one request at a time, so that the one the venue bans
        # has no company on the way that could not know of the ban.
        config = write_config(tmp_path, config_body(port, DEPTH, batch=1))
        await provoke_a_ban_on_our_ip(f"http://127.0.0.1:{port}", now)
        async with running_daemon(config, tsdb_dsn, tmp_path / "first.log") as proc:
            # Its first request is banned; the ban is persisted.
            async def persisted() -> bool:
                return await banned_until(tsdb_dsn) is not None

            await until(persisted, 120, "the ban persisted")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        ban_ends = await banned_until(tsdb_dsn)
        assert ban_ends is not None and ban_ends > now()
        assert sim.counters.sent_418 == 1

        config = write_config(tmp_path, config_body(port, DEPTH), health_port=health_port)
        second = tmp_path / "second.log"
        started, before = now(), sim_requests(sim)
        async with running_daemon(config, tsdb_dsn, second) as proc:
            # The second process reads the persisted ban and waits for its end.
            held = await logged(second, "venue ban still in force", within=BAN_S, proc=proc)
            assert datetime.fromisoformat(held["until"]) == ban_ends
            asked = await first_request(sim, within=BAN_S + 120, before=before, now=now)
            assert asked >= ban_ends
            # The daemon itself stored its whole lookback, and every fault
            # fired and was counted. (Not its first heal cycle: under this
            # venue the reconnect fetches keep the backfill queue from ever
            # being empty, which the heal loop waits for.)
            await until(lambda: caught_up(tsdb_dsn, sim, asked, now), BACKFILL_BOUND_S,
                        "the daemon's lookback", every=5)  # fmt: skip
            malformed: dict[str, float] = {}

            async def fired() -> bool:
                nonlocal malformed
                malformed = await malformed_counts(health_port)
                return all_faults_fired(sim.counters, malformed)

            await until(fired, BACKFILL_BOUND_S, "every fault to fire and be counted")
            assert proc.returncode is None, second.read_text()[-3000:]
            stopped = now()
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
