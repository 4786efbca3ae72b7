"""Scale-out: the database stopped for longer than the lease TTL, then
started. Every instance stops acting on its series before its leases can
expire; afterwards no series has two owners and the store equals the truth."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from candled import clock
from candled.store.cluster import PostgresCluster
from candled.store.migrations import migrate
from tests import pg
from tests.scaleout import (
    BOUND_S,
    assert_one_owner_each,
    healed_equals_truth,
    three_instances,
    wait_settled,
)
from tests.waiting import log_events, until

TTL_S = 6


@pytest.fixture
def database() -> Iterator[PostgresCluster]:
    with pg.own_cluster("scaleout-outage") as own:
        yield own


async def test_a_database_outage_longer_than_the_ttl(
    database: PostgresCluster, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database.dsn)
    await migrate(conn)
    await conn.close()
    async with three_instances(tmp_path, database.dsn, TTL_S) as cluster:
        instances, session = cluster.instances, cluster.session
        conn = await asyncpg.connect(database.dsn)
        await wait_settled(conn, instances, session)
        await assert_one_owner_each(conn, instances, session)
        await conn.close()

        await asyncio.to_thread(database.stop)

        # Each instance stops acting on its series (its leases may expire).
        def fenced() -> bool:
            for inst in instances:
                assert inst.proc is not None and inst.proc.returncode is None, inst.tail()
            return all(log_events(i.logs[-1], "leases not renewed in time") for i in instances)

        await until(fenced, BOUND_S, "every instance to stop acting on its series")
        await asyncio.sleep(TTL_S)  # the outage outlasts the leases
        await asyncio.to_thread(database.start)  # same port: the pools find it again
        back = clock.now()

        conn = await asyncpg.connect(database.dsn)
        try:
            await wait_settled(conn, instances, session)
            for _ in range(6):
                shares = await assert_one_owner_each(conn, instances, session)
                await asyncio.sleep(TTL_S / 6)
            assert len(shares) == 3
            await healed_equals_truth(conn, cluster, instances, back + timedelta(seconds=2 * TTL_S))
            await assert_one_owner_each(conn, instances, session)
        finally:
            await conn.close()
        await cluster.stop()
