"""Series leases in PostgreSQL: the lease table's rules (store.leases) and the
keeper (ownership.LeaseKeeper) against a real TimescaleDB, in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pytest

from candled.domain import SeriesKey
from candled.ownership import MARGIN, LeaseKeeper, View
from candled.store import leases
from candled.store.migrations import migrate
from tests.pg import own_cluster
from tests.waiting import until

KEYS = [SeriesKey("binance", f"S{i:02d}USDT", "1m") for i in range(12)]
NAMES = sorted(str(k) for k in KEYS)


def identity(name: str) -> leases.Identity:
    return leases.Identity(name, "test-host", 1, "127.0.0.1:0", "0")


async def test_a_live_lease_is_never_taken_and_an_expired_one_is(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        assert await leases.claim(conn, "a", NAMES[:4], 30) == set(NAMES[:4])
        assert await leases.claim(conn, "b", NAMES[:6], 30) == set(NAMES[4:6])
        assert await leases.claim(conn, "a", NAMES[:4], 30) == set(NAMES[:4])  # renewed
        await conn.execute(
            "UPDATE series_leases SET expires_at = now() - interval '1 s' WHERE series = $1",
            NAMES[0],
        )
        assert await leases.claim(conn, "b", NAMES[:1], 30) == {NAMES[0]}
        rows = {lease.series: lease for lease in await leases.leases(conn)}
        assert rows[NAMES[0]].holder == "b" and rows[NAMES[0]].epoch == 2
        assert rows[NAMES[1]].holder == "a" and rows[NAMES[1]].epoch == 1
        # "a" no longer holds NAMES[0]: renewing it gets nothing.
        assert await leases.claim(conn, "a", NAMES[:4], 30) == set(NAMES[1:4])
    finally:
        await conn.close()


async def test_release_gives_up_all_but_what_is_kept(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        await leases.claim(conn, "a", NAMES[:5], 30)
        assert await leases.release(conn, "a", NAMES[:2]) == set(NAMES[2:5])
        assert {x.series for x in await leases.leases(conn)} == set(NAMES[:2])
        assert await leases.leave(conn, "a") == set(NAMES[:2])
        assert await leases.leases(conn) == []
    finally:
        await conn.close()


async def test_members_are_live_until_their_ttl_passes(migrated: str) -> None:
    conn = await asyncpg.connect(migrated)
    try:
        live = await leases.heartbeat(conn, identity("a"), 30)
        assert [m.instance for m in live] == ["a"]
        await leases.heartbeat(conn, identity("b"), 30)
        await conn.execute(
            "UPDATE cluster_members SET expires_at = now() - interval '1 s' WHERE instance = 'b'"
        )
        live = await leases.heartbeat(conn, identity("a"), 30)
        assert [m.instance for m in live] == ["a"]
        assert [(m.instance, m.live) for m in await leases.members(conn)] == [
            ("a", True), ("b", False),
        ]  # fmt: skip
    finally:
        await conn.close()


async def test_concurrent_claims_never_give_a_series_two_holders(migrated: str) -> None:
    conns = [await asyncpg.connect(migrated) for _ in range(4)]
    names = [f"v:S{i}:1m" for i in range(300)]
    try:
        for _ in range(5):
            await conns[0].execute("UPDATE series_leases SET expires_at = now() - interval '1 s'")
            got = await asyncio.gather(*(
                leases.claim(c, f"i{n}", names, 30) for n, c in enumerate(conns)
            ))  # fmt: skip
            assert sum(len(g) for g in got) == len(names)
            assert set().union(*got) == set(names)
    finally:
        for c in conns:
            await c.close()


class Follower:
    """A keeper's `on_view`: the views it was told, and when."""

    def __init__(self) -> None:
        self.views: list[tuple[float, View]] = []

    async def __call__(self, view: View) -> None:
        self.views.append((time.monotonic(), view))

    @property
    def owned(self) -> frozenset[SeriesKey]:
        return self.views[-1][1].owned if self.views else frozenset()


@asynccontextmanager
async def keeper(
    dsn: str, name: str, ttl_s: float, keys: list[SeriesKey] = KEYS
) -> AsyncIterator[tuple[LeaseKeeper, Follower, asyncio.Task[None]]]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    follower = Follower()
    k = LeaseKeeper(pool, identity(name), timedelta(seconds=ttl_s), lambda: keys, follower, dsn=dsn)
    task = asyncio.create_task(k.run())
    try:
        yield k, follower, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.terminate()


async def test_keepers_split_the_series_and_a_dead_ones_are_taken_over(migrated: str) -> None:
    ttl_s = 3.0
    async with (
        keeper(migrated, "a", ttl_s) as (_, fa, _),
        keeper(migrated, "b", ttl_s) as (kb, fb, tb),
    ):

        def split() -> bool:
            return bool(fa.owned and fb.owned and fa.owned | fb.owned == set(KEYS)
                        and not fa.owned & fb.owned)  # fmt: skip

        await until(split, 30, "two keepers to split the series")
        tb.cancel()  # dies without handing over: its leases must expire first
        await asyncio.gather(tb, return_exceptions=True)
        split_at = len(fa.views)
        await until(lambda: fa.owned == set(KEYS), 30, "the survivor to take every series")
        took = next(t for t, v in fa.views[split_at:] if v.owned == set(KEYS))
        # Not before b's leases expired: TTL after its last renewal started
        # (the database's clock and ours are this machine's).
        b_renewed = kb.valid_until - ttl_s * (1 - MARGIN)
        assert took >= b_renewed + ttl_s - 0.1, (took - b_renewed, ttl_s)


async def test_a_stop_hands_the_series_over_at_once(migrated: str) -> None:
    # A minute's TTL: renewals every 20 s, so only the notification explains
    # a take-over within a few seconds.
    async with (
        keeper(migrated, "a", 60) as (_, fa, _),
        keeper(migrated, "b", 60) as (kb, fb, tb),
    ):
        await until(lambda: bool(fa.owned and fb.owned and len(fa.owned | fb.owned) == 12), 60,
                    "two keepers to split the series")  # fmt: skip
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
        await kb.leave()
        await until(lambda: fa.owned == set(KEYS), 10, "a to take b's series at once")


async def test_a_keeper_that_cannot_renew_stops_before_its_leases_expire() -> None:
    ttl_s = 6.0
    with own_cluster("leases-fence") as cluster:
        conn = await asyncpg.connect(cluster.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        async with keeper(cluster.dsn, "a", ttl_s) as (k, fa, _):
            await until(lambda: fa.owned == set(KEYS), 30, "the keeper to own every series")
            cluster.stop()
            await until(lambda: not fa.owned, 3 * ttl_s, "the keeper to stop acting")
            fenced = next(t for t, v in fa.views if not v.owned and t > fa.views[0][0])
            # The last renewal that succeeded started before valid_until - TTL*(1-MARGIN);
            # its leases run TTL from then by the database's clock.
            last_start = k.valid_until - ttl_s * (1 - MARGIN)
            assert fenced < last_start + ttl_s, (fenced - last_start, ttl_s)
            cluster.start()
            await until(lambda: fa.owned == set(KEYS), 60, "the keeper to own them again")


@pytest.mark.parametrize("ttl", ["2s", "2h"])
def test_lease_ttl_out_of_range_names_the_key(ttl: str) -> None:
    from candled.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"cluster\.lease_ttl.*out of range"):
        parse_config({"cluster": {"enabled": True, "lease_ttl": ttl}})
