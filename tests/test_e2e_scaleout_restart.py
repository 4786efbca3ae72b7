"""Scale-out: SIGTERM hands an instance's leases over at once (not when they
expire), and a rolling restart of all three instances loses no bar and
duplicates none."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import asyncpg

from candled import clock
from tests.scaleout import (
    BOUND_S,
    assert_one_owner_each,
    healed_equals_truth,
    lease_holders,
    three_instances,
    wait_settled,
)
from tests.waiting import log_events, until

TTL_S = 30  # the default: an expiry could not explain a take-over within TTL - TTL/3


async def test_sigterm_hands_over_and_a_rolling_restart_loses_nothing(
    migrated: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        async with three_instances(tmp_path, migrated, TTL_S) as cluster:
            instances, session = cluster.instances, cluster.session
            await wait_settled(conn, instances, session)
            shares = await assert_one_owner_each(conn, instances, session)
            assert len(shares) == 3

            # SIGTERM: the others own its series long before its leases could expire.
            first = instances[0]
            doc = await first.health(session)
            assert doc is not None
            first_id = doc["cluster"]["instance"]
            stopped = time.monotonic()
            assert await first.signal(signal.SIGTERM) == 0, first.tail()

            async def handed_over() -> bool:
                holders = await lease_holders(conn)
                return all(h and h[0] != first_id for h in holders.values())

            await until(handed_over, BOUND_S, "the others to take the stopped one's series")
            took_s = time.monotonic() - stopped
            assert took_s < TTL_S * 2 / 3, f"taken {took_s:.1f} s after SIGTERM: by expiry"
            await wait_settled(conn, instances, session)

            # Back, then every instance in turn: stop, settle, start, settle.
            await first.start(migrated)
            await wait_settled(conn, instances, session)
            for inst in instances:
                assert await inst.signal(signal.SIGTERM) == 0, inst.tail()
                await wait_settled(conn, instances, session)
                await inst.start(migrated)
                await wait_settled(conn, instances, session)
            rolled = clock.now()
            await assert_one_owner_each(conn, instances, session)

            await healed_equals_truth(conn, cluster, instances, rolled)
            await cluster.stop()
            # The hand-overs alone (subscribe, then catch up from the newest
            # stored bar) left no hole: no heal cycle had anything to fetch.
            cycles = [e for i in instances for log in i.logs
                      for e in log_events(log, "heal cycle done")]  # fmt: skip
            assert cycles and all(e["requests"] == 0 for e in cycles), cycles
            assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
            assert await conn.fetchval("SELECT count(*) FROM series_leases") == 0
            assert await conn.fetchval("SELECT count(*) FROM cluster_members") == 0
    finally:
        await conn.close()
