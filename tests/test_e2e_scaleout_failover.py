"""Scale-out: three `candled run` instances share a dozen live series through
leases in the real TimescaleDB, against the simulated exchange. One is killed
with SIGKILL: the others take its series over and the store ends equal to the
simulator's truth, with no command run."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
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
from tests.waiting import until

TTL_S = 6
ACQUIRED = "candled_lease_acquisitions_total"
HANDED = "candled_lease_handovers_total"


async def test_kill_9_of_one_of_three_instances(migrated: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        async with three_instances(tmp_path, migrated, TTL_S) as cluster:
            instances, session = cluster.instances, cluster.session
            await wait_settled(conn, instances, session)
            # Sampled over a few renewals: one owner each, and the table and
            # every instance agree.
            for _ in range(6):
                shares = await assert_one_owner_each(conn, instances, session)
                await asyncio.sleep(TTL_S / 6)
            assert len(shares) == 3

            victim = instances[1]
            doc = await victim.health(session)
            assert doc is not None
            victim_id = doc["cluster"]["instance"]
            orphaned = shares[victim_id]
            survivors = [i for i in instances if i is not victim]
            before = [await i.metric(session, m) for i in survivors for m in (ACQUIRED, HANDED)]
            await victim.signal(signal.SIGKILL)
            killed, killed_mono = clock.now(), time.monotonic()

            async def taken_over() -> bool:
                holders = await lease_holders(conn)
                return all(h and h[0] != victim_id for h in holders.values())

            await until(taken_over, BOUND_S, "the survivors to take the dead one's series")
            took_s = time.monotonic() - killed_mono
            shares = await assert_one_owner_each(conn, survivors, session)
            assert orphaned <= set().union(*shares.values())
            # Streaming again on the survivors within 2 x lease_ttl of the kill.
            assert took_s < 2 * TTL_S, f"taken over {took_s:.1f} s after the kill"
            for inst in survivors:
                doc = await inst.health(session)
                assert doc is not None
                assert all(v["ws_connected"] for v in doc["venues"]), doc["venues"]
                assert await inst.metric(session, "candled_cluster_members") == 2
                assert await inst.metric(session, "candled_lease_losses_total") == 0
            after = [await i.metric(session, m) for i in survivors for m in (ACQUIRED, HANDED)]
            # Taken: the dead one's series, plus any the survivors moved between
            # them (bounded loads rebalance a little), each handed over once.
            gained = sum(after[0::2]) - sum(before[0::2]) - (sum(after[1::2]) - sum(before[1::2]))
            assert gained == len(orphaned), (before, after, orphaned)

            # A heal cycle judging past the take-over, on every survivor.
            await healed_equals_truth(
                conn, cluster, survivors, killed + timedelta(seconds=2 * TTL_S)
            )
            await assert_one_owner_each(conn, survivors, session)
            await cluster.stop()
            # Hand-overs leave nothing behind as hostile input: answers about
            # a series given away are dropped, not quarantined.
            assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    finally:
        await conn.close()
