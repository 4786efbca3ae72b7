"""End to end: a 5xx storm from the daemon's start. The daemon process waits
it out quietly (few requests, little CPU) and then, by itself, fills the store
with the simulator's truth. (The venue broken in every other way:
test_e2e_hostile.py.)"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from candled import clock
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.binance_e2e import (
    BACKFILL_BOUND_S,
    KEYS,
    assert_store_equals_truth,
    config_body,
    scenario,
)
from tests.daemon_proc import running_daemon, stop, write_config
from tests.waiting import assert_series_ok, first_request, logged, until


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@pytest.mark.timeout(600)
async def test_5xx_storm_is_waited_out_quietly_and_then_filled(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    """Every klines request fails for 60 s from the daemon's start: the daemon
    backs off (few requests, little CPU), then completes the data by itself."""
    # The quiet is measured from `ramp_s` after the first error to the storm's
    # end, at least 15 s (asserted): about 30 s after a start of 15 s, a loaded
    # machine's. Its end is waited for, and then the backoff's last wait (up
    # to a minute): a longer storm only adds to both.
    storm_s, ramp_s = 60.0, 10.0
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
