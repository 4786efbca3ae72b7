"""Test helpers for PostgreSQL: scratch directories and throwaway databases."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from candled.store.cluster import PostgresCluster

REQUIRE_TIMESCALEDB_ENV = "CANDLED_REQUIRE_TIMESCALEDB"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail where CI demands TimescaleDB (`CANDLED_REQUIRE_TIMESCALEDB=1`)."""
    if os.environ.get(REQUIRE_TIMESCALEDB_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_TIMESCALEDB_ENV}=1)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A private temp dir whose subdirectories the `postgres` user can reach.

    pytest's tmp_path lives under /tmp/pytest-of-root (0700): when the tests run as
    root, the cluster's `postgres` user could not traverse it.
    """
    base = Path(tempfile.mkdtemp(prefix=f"candled-{name}-"))
    base.chmod(0o711)  # traverse, not list
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def own_cluster(name: str) -> Iterator[PostgresCluster]:
    """A started cluster of the caller's own, to stop and start mid-run.

    On a fixed port: `PostgresCluster(port=None)` picks a new one on every
    start, and the daemon's pool must find the database again after a restart.
    """
    with scratch_dir(name) as base:
        cluster = PostgresCluster(base / "pg", port=free_port())
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at another database of the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@asynccontextmanager
async def fresh_database(server_dsn: str, prefix: str = "test") -> AsyncIterator[str]:
    """Create a uniquely named empty database, yield its DSN, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        # FORCE: a test may leave connections (or TimescaleDB's scheduler) behind.
        await _execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
