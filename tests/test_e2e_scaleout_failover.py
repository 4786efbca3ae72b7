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

import aiohttp
import asyncpg

from candled import clock
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.scaleout import (
    BOUND_S,
    assert_one_owner_each,
    assert_store_equals_truth,
    lease_holders,
    make_instances,
    scenario,
    settled_before,
    wait_heal_cycle,
    wait_settled,
    wall,
)
from tests.waiting import until

TTL_S = 6
ACQUIRED = "candled_lease_acquisitions_total"
# Compared from this long before the start: inside every heal cycle's
# lookback (10m) for the whole test.
WINDOW = timedelta(minutes=6)


async def test_kill_9_of_one_of_three_instances(migrated: str, tmp_path: Path) -> None:
    sim = SimExchange(parse_scenario(scenario(), clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    instances = make_instances(tmp_path, port, 3, lease_ttl=f"{TTL_S}s")
    started = clock.now()
    conn = await asyncpg.connect(migrated)
    try:
        async with aiohttp.ClientSession() as session:
            for inst in instances:
                await inst.start(migrated)
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
            acquired = [await i.metric(session, ACQUIRED) for i in survivors]
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
            after = [await i.metric(session, ACQUIRED) for i in survivors]
            assert sum(after) - sum(acquired) == len(orphaned), (acquired, after, orphaned)

            # A heal cycle judging past the take-over, on every survivor, then
            # the store equals the truth from the lookback to that point.
            hi = killed + timedelta(seconds=2 * TTL_S)
            await until(lambda: settled_before(clock.now()) > hi, BOUND_S, "the hole to settle")
            await wait_heal_cycle(survivors, wall())
            await assert_store_equals_truth(conn, sim.truth, started - WINDOW, hi)
            await assert_one_owner_each(conn, survivors, session)
            for inst in survivors:
                assert await inst.signal(signal.SIGTERM) == 0, inst.tail()
            # Hand-overs leave nothing behind as hostile input: answers about
            # a series given away are dropped, not quarantined.
            assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    finally:
        for inst in instances:
            if inst.running:
                assert inst.proc is not None
                inst.proc.kill()
                await inst.proc.wait()
        await conn.close()
        await sim.stop()
