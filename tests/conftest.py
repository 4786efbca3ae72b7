"""Shared fixtures: throwaway PostgreSQL clusters (with and without TimescaleDB)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

# `CANDLED_TEST_AT=2026-12-05T12:00Z make test` runs the whole suite (this
# process, the daemons and simulators it starts) as if the clock read that
# instant now: set before anything imports daemon.clock, which reads it once.
if at := os.environ.get("CANDLED_TEST_AT"):
    instant = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC)
    os.environ["CANDLED_CLOCK_OFFSET"] = str((instant - datetime.now(UTC)).total_seconds())

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings

from candled.store.cluster import ClusterError, PostgresCluster
from candled.store.migrations import migrate
from tests.pg import fresh_database, scratch_dir, unavailable

# `make fuzz` (HYPOTHESIS_PROFILE=fuzz): the fuzz tests, tests/test_fuzz_*.py,
# with FUZZ_EXAMPLES examples each instead of the bounded number `make test` runs.
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def timescale_cluster() -> Iterator[PostgresCluster]:
    """A cluster preloading TimescaleDB; skipped (or failed, see tests.pg) without it."""
    with scratch_dir("tsdb") as base:
        cluster = _cluster(base, timescaledb=True)
        if not cluster.has_timescaledb:
            unavailable(
                f"TimescaleDB is not installed ({cluster.description}): "
                "run scripts/install-timescaledb.sh"
            )
        with cluster:
            yield cluster


@pytest.fixture(scope="session")
def plain_cluster() -> Iterator[PostgresCluster]:
    """Same binaries, no TimescaleDB preloaded: the plain-PostgreSQL path."""
    with scratch_dir("plain") as base, _cluster(base, timescaledb=False) as cluster:
        yield cluster


@pytest.fixture
async def tsdb_dsn(timescale_cluster: PostgresCluster) -> AsyncIterator[str]:
    """DSN of a fresh empty database on the TimescaleDB cluster (extension not created)."""
    async with fresh_database(timescale_cluster.dsn, "tsdb") as dsn:
        yield dsn


@pytest.fixture
async def migrated(tsdb_dsn: str) -> str:
    """`tsdb_dsn` with candled's migrations applied."""
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return tsdb_dsn


@pytest.fixture
async def plain_dsn(plain_cluster: PostgresCluster) -> AsyncIterator[str]:
    """DSN of a fresh empty database on the plain cluster."""
    async with fresh_database(plain_cluster.dsn, "plain") as dsn:
        yield dsn


def _cluster(base_dir: Path, *, timescaledb: bool) -> PostgresCluster:
    try:
        return PostgresCluster(base_dir / "data", timescaledb=timescaledb)
    except ClusterError as exc:
        unavailable(str(exc))
