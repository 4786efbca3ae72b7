"""End to end: the daemon process against the simulated exchange and a real
TimescaleDB. The store must equal the simulator's truth, value for value.
(Under faults: test_e2e_collection_faults.py; kill -9 and restart:
test_e2e_collection_kill.py; the shared run and comparison: binance_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.binance_e2e import KEYS, assert_store_equals_truth, run_against, scenario
from tests.waiting import assert_series_ok


@pytest.mark.timeout(600)
async def test_store_equals_truth_after_the_backfill_and_live_bars(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    run = await run_against(scenario(), tmp_path, tsdb_dsn)
    await assert_store_equals_truth(run.sim, tsdb_dsn, run.started, run.stopped, asked=run.asked)
    assert run.counters.sent_429 == 0 and run.counters.sent_418 == 0
    # The daemon's own audit after its backfill found every series complete.
    await assert_series_ok(tsdb_dsn, KEYS)
