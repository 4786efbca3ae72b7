"""End to end: bars deleted with plain SQL behind the audit frontier of a
running daemon come back at its next heal cycle, with no command run.

The daemon process, the simulated exchange and TimescaleDB are real; the heal
interval is short so that the cycle after the delete comes soon."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from candled import clock
from candled.domain import SeriesKey
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import (
    compare_with_truth,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    wait_until,
    write_config,
)

SYMBOLS = ["AAAUSDT", "BBBUSDT"]
KEYS = [SeriesKey("binance", s, "1m") for s in SYMBOLS]
LOOKBACK = timedelta(hours=12)


def heal_cycles(log: Path) -> list[dict[str, object]]:
    """The daemon's "heal cycle done" log records, oldest first."""
    records = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [r for r in records if r.get("event") == "heal cycle done"]


async def statuses(conn: asyncpg.Connection) -> dict[str, tuple[str, int]]:
    rows = await conn.fetch("SELECT symbol, status, missing_bars FROM series_status")
    return {r["symbol"]: (r["status"], r["missing_bars"]) for r in rows}


@pytest.mark.timeout(300)
async def test_bars_deleted_through_candles_come_back_at_the_next_heal_cycle(
    tsdb_dsn: str, tmp_path: Path
) -> None:
    scenario = {"seed": 4, "symbols": [{"symbol": s, "listed": "-30d"} for s in SYMBOLS]}
    sim = SimExchange(parse_scenario(scenario, clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    log = tmp_path / "daemon.log"
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        body = '[healing]\ninterval = "4s"\n' + venue_toml("binance", port)
        body += series_toml("binance", SYMBOLS, ["1m"], lookback='"12h"')
        config = write_config(tmp_path, body)
        started = clock.now()
        async with running_daemon(config, tsdb_dsn, log) as proc:
            # The orchestrated backfill is done and audited: every series OK.
            await wait_until(lambda: _all_ok(conn), within=120)
            frontier = await conn.fetchval(
                "SELECT min(audited_until) FROM series_state JOIN series s ON s.id = series_id"
            )
            assert frontier is not None
            # Bars well behind the frontier (the incremental audit's margin is
            # ten minutes): from the oldest half of the lookback.
            rnd = random.Random(7)
            oldest = KEYS[0].tf.ceil(started - LOOKBACK) + timedelta(minutes=5)
            choices = list(KEYS[0].tf.bars(oldest, oldest + LOOKBACK / 2))
            purged = sorted(rnd.sample(choices, 25))
            assert purged[-1] < frontier - timedelta(hours=1)
            cycles_before = len(heal_cycles(log))
            deleted = await conn.execute(
                "DELETE FROM candles WHERE venue = 'binance' AND timeframe = '1m' "
                "AND ts = ANY($1::timestamptz[])",
                purged,
            )
            assert deleted == f"DELETE {len(purged) * len(SYMBOLS)}"

            async def refilled() -> bool:
                n = await conn.fetchval(
                    "SELECT count(*) FROM candles WHERE ts = ANY($1::timestamptz[])", purged
                )
                return bool(n == len(purged) * len(SYMBOLS))

            await wait_until(refilled, within=120)
            await wait_until(lambda: _all_ok(conn), within=60)
            assert proc.returncode is None
            stopped = clock.now()
            assert await stop(proc) == 0
        # No command ran: the daemon's own heal cycles found and repaired them.
        after = heal_cycles(log)[cycles_before:]
        assert any(int(str(c["requests"])) > 0 for c in after), after
        for key in KEYS:
            lo = key.tf.add(key.tf.ceil(started - LOOKBACK), 1)
            hi = key.tf.floor(stopped - timedelta(minutes=1))
            diff = await compare_with_truth(conn, sim.truth, key, lo, hi)
            assert diff.equal, f"{key}: {diff}"
    finally:
        await conn.close()
        await sim.stop()


async def _all_ok(conn: asyncpg.Connection) -> bool:
    try:
        found = await statuses(conn)
    except asyncpg.UndefinedTableError:
        return False  # the daemon has not migrated the database yet
    return len(found) == len(SYMBOLS) and all(v == ("OK", 0) for v in found.values())
