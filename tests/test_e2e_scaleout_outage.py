"""Scale-out: the database stopped for longer than the lease TTL, then
started. Every instance stops acting on its series before its leases can
expire; afterwards no series has two owners and the store equals the truth."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled.store.cluster import PostgresCluster
from candled.store.migrations import migrate
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests import pg
from tests.scaleout import (
    BOUND_S,
    assert_one_owner_each,
    assert_store_equals_truth,
    make_instances,
    scenario,
    settled_before,
    wait_heal_cycle,
    wait_settled,
    wall,
)
from tests.waiting import log_events, until

TTL_S = 6
WINDOW = timedelta(minutes=6)  # compared from this long before the start (lookback 10m)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with pg.own_cluster("scaleout-outage") as own:
        yield own


async def test_a_database_outage_longer_than_the_ttl(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(cluster.dsn)
    await migrate(conn)
    await conn.close()
    sim = SimExchange(parse_scenario(scenario(), clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    instances = make_instances(tmp_path, port, 3, lease_ttl=f"{TTL_S}s")
    started = clock.now()
    try:
        async with aiohttp.ClientSession() as session:
            for inst in instances:
                await inst.start(cluster.dsn)
            conn = await asyncpg.connect(cluster.dsn)
            await wait_settled(conn, instances, session)
            await assert_one_owner_each(conn, instances, session)
            await conn.close()

            await asyncio.to_thread(cluster.stop)

            # Each instance stops acting on its series (its leases may expire).
            def fenced() -> bool:
                for inst in instances:
                    assert inst.proc is not None and inst.proc.returncode is None, inst.tail()
                return all(log_events(i.logs[-1], "leases not renewed in time") for i in instances)

            await until(fenced, BOUND_S, "every instance to stop acting on its series")
            await asyncio.sleep(TTL_S)  # the outage outlasts the leases
            await asyncio.to_thread(cluster.start)  # same port: the pools find it again
            back = clock.now()

            conn = await asyncpg.connect(cluster.dsn)
            try:
                await wait_settled(conn, instances, session)
                for _ in range(6):
                    shares = await assert_one_owner_each(conn, instances, session)
                    await asyncio.sleep(TTL_S / 6)
                assert len(shares) == 3
                hi = back + timedelta(seconds=2 * TTL_S)
                await until(lambda: settled_before(clock.now()) > hi, BOUND_S, "bars to settle")
                await wait_heal_cycle(instances, wall())
                await assert_store_equals_truth(conn, sim.truth, started - WINDOW, hi)
                await assert_one_owner_each(conn, instances, session)
            finally:
                await conn.close()
            for inst in instances:
                assert await inst.signal(signal.SIGTERM) == 0, inst.tail()
    finally:
        for inst in instances:
            if inst.running:
                assert inst.proc is not None
                inst.proc.kill()
                await inst.proc.wait()
        await sim.stop()
