"""The embedded store (`[database] dsn = ""`) admits only the daemon and the
operator: no TCP listener, a Unix socket in a 0700 directory under state_dir,
peer authentication; its server runs with a clean environment; stores made by
earlier versions (TCP on 127.0.0.1, trust for everyone) are upgraded in place."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from urllib.parse import unquote

import asyncpg
import pytest

from candled.store.cluster import PostgresCluster
from candled.store.provision import EMBEDDED_PORT, SOCKET_DIR, embedded_dsn
from tests.pg import free_port, scratch_dir

# What the server may inherit: what PostgreSQL itself needs, what runuser sets
# for the user it switches to, and what the server sets for itself.
SERVER_ENV = {"PATH", "LANG", "TZ", "TZDIR", "LD_LIBRARY_PATH", "HOME", "SHELL", "USER", "LOGNAME"}
SERVER_ENV_PREFIXES = ("LC_", "PG")
LOGIN_REFUSED = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _server_user() -> str:
    return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _tcp_login_refused(data_dir: Path, port: int) -> None:
    """Log in over TCP as `postgres` with no password: refused, or (another
    server on that port, e.g. a `make run` beside the suite) not ours."""
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres",
            password="", passfile="/nonexistent", timeout=5,
        )  # fmt: skip
    except LOGIN_REFUSED:
        return
    try:
        other = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    assert other != str(data_dir), "logged in over TCP with no secret"


def _pid_file(data_dir: Path) -> list[str]:
    return (data_dir / "postmaster.pid").read_text().splitlines()


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _hba_rules(data_dir: Path) -> list[str]:
    lines = (data_dir / "pg_hba.conf").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _assert_private(base: Path, dsn: str) -> None:
    data_dir = base / "state" / "pgdata"
    socket_dir = base / "state" / SOCKET_DIR
    lines = _pid_file(data_dir)
    assert lines[5].strip() == "", f"listens on TCP {lines[5]!r}"  # listen_addresses
    assert Path(lines[4]) == socket_dir
    st = socket_dir.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert pwd.getpwuid(st.st_uid).pw_name == _server_user()
    assert stat.S_IMODE((socket_dir / f".s.PGSQL.{EMBEDDED_PORT}").stat().st_mode) == 0o700
    rules = _hba_rules(data_dir)
    assert rules and all(r.split()[0] == "local" and "trust" not in r.split() for r in rules)
    assert f"host={socket_dir}&" in unquote(dsn)


async def test_only_the_private_socket_admits_and_tcp_refuses_a_login() -> None:
    with scratch_dir("sec-tcp") as base:
        async with embedded_dsn("", base / "state") as dsn:
            assert await _fetchval(dsn, "SELECT current_user") == "postgres"
            await _tcp_login_refused(base / "state" / "pgdata", EMBEDDED_PORT)
            _assert_private(base, dsn)


async def test_the_operators_psql_line_from_the_readme_works() -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql on this machine")
    with scratch_dir("sec-psql") as base:
        async with embedded_dsn("", base / "state"):
            r = await asyncio.to_thread(
                subprocess.run,
                [psql, "-h", str(base / "state" / SOCKET_DIR), "-p", str(EMBEDDED_PORT),
                 "-U", "postgres", "-XAtc", "SELECT 40 + 2"],
                capture_output=True, text=True, timeout=60,
                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
async def test_another_local_user_cannot_connect() -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql on this machine")
    with scratch_dir("sec-other") as base:
        async with embedded_dsn("", base / "state"):
            for host in (str(base / "state" / SOCKET_DIR), "127.0.0.1"):
                r = await asyncio.to_thread(
                    subprocess.run,
                    ["runuser", "-u", "nobody", "--", psql, "-h", host, "-p", str(EMBEDDED_PORT),
                     "-U", "postgres", "-d", "postgres", "-XAtc", "SHOW data_directory"],
                    capture_output=True, text=True, timeout=60, cwd="/",
                    env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "PGCONNECT_TIMEOUT": "5"},
                )  # fmt: skip
                # Refused, or (TCP) another server on that port, not ours.
                assert r.returncode != 0 or r.stdout.strip() != str(base / "state" / "pgdata"), (
                    f"user nobody logged in through {host}"
                )


async def test_server_environment_holds_none_of_the_daemons_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"fake-venue-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("CANDLED_TEST_FAKE_API_KEY", secret)  # as EnvironmentFile sets them
    monkeypatch.setenv("BINANCE_API_SECRET", secret)
    with scratch_dir("sec-env") as base:
        async with embedded_dsn("", base / "state"):
            pid = int(_pid_file(base / "state" / "pgdata")[0])
            environ = _environ(pid)
    assert secret.encode() not in environ
    inherited = []
    for entry in environ.decode(errors="replace").split("\0"):
        name, sep, value = entry.partition("=")
        if not sep or name in SERVER_ENV or name.startswith(SERVER_ENV_PREFIXES):
            continue
        if os.environ.get(name) == value:
            inherited.append(name)
    assert inherited == [], f"the server inherited the daemon's {inherited}"


async def test_an_existing_trust_store_is_upgraded_in_place() -> None:
    with scratch_dir("sec-upgrade") as base:
        data_dir = base / "state" / "pgdata"
        # What earlier versions made: TCP on 127.0.0.1, trust for every local user.
        old = PostgresCluster(data_dir, port=free_port())
        await asyncio.to_thread(old.start)
        try:
            await _fetchval(old.dsn, "CREATE TABLE kept AS SELECT 7 AS v")
        finally:
            await asyncio.to_thread(old.stop)
        assert any("trust" in rule.split() for rule in _hba_rules(data_dir))

        for _start in range(2):  # upgraded, then found upgraded
            async with embedded_dsn("", base / "state") as dsn:
                assert await _fetchval(dsn, "SELECT v FROM kept") == 7
                _assert_private(base, dsn)
                await _tcp_login_refused(data_dir, EMBEDDED_PORT)
        assert not (data_dir / "postmaster.pid").exists()


async def test_a_command_beside_the_daemon_adopts_the_private_server() -> None:
    with scratch_dir("sec-adopt") as base:
        data_dir = base / "state" / "pgdata"
        async with embedded_dsn("", base / "state") as daemon_dsn:
            pid = _pid_file(data_dir)[0]
            async with embedded_dsn("", base / "state") as command_dsn:  # e.g. `candled audit`
                assert command_dsn == daemon_dsn
                assert await _fetchval(command_dsn, "SELECT 1") == 1
            assert _pid_file(data_dir)[0] == pid  # left running for the daemon
            assert await _fetchval(daemon_dsn, "SELECT 1") == 1


async def test_a_server_started_by_an_earlier_version_is_adopted_until_it_restarts() -> None:
    with scratch_dir("sec-old-running") as base:
        data_dir = base / "state" / "pgdata"
        old = PostgresCluster(data_dir, port=free_port())  # an earlier daemon, still running
        await asyncio.to_thread(old.start)
        try:
            async with embedded_dsn("", base / "state") as dsn:
                assert await _fetchval(dsn, "SELECT 1") == 1  # through its socket
                adopted = PostgresCluster(data_dir, socket_dir=base / "state" / SOCKET_DIR)
                await asyncio.to_thread(adopted.start)
                assert adopted.listens_on_tcp()  # what the warning is about
            assert old.is_running()  # not ours to stop
        finally:
            await asyncio.to_thread(old.stop)
        async with embedded_dsn("", base / "state") as dsn:  # restarted: upgraded
            _assert_private(base, dsn)


async def test_a_state_dir_too_long_for_a_socket_path_gets_a_private_one_in_tmp() -> None:
    with scratch_dir("sec-long") as base:
        deep = base / ("d" * 100)
        async with embedded_dsn("", deep / "state") as dsn:
            socket_dir = Path(_pid_file(deep / "state" / "pgdata")[4])
            assert socket_dir.parent == Path("/tmp") and str(socket_dir) in unquote(dsn)
            assert _pid_file(deep / "state" / "pgdata")[5].strip() == ""
            assert _mode(socket_dir) == 0o700
            assert await _fetchval(dsn, "SELECT 1") == 1
        assert _mode(socket_dir) is None  # removed with the server
