"""Get a migrated database for a config: the configured DSN, or an embedded
PostgreSQL under `state_dir` that we start and stop ourselves.

The embedded server has no TCP listener: only a Unix socket in
`state_dir/pgsocket` (mode 0700, owned by the server's user), admitting the
daemon's OS user, the server's and root (peer authentication), so no other
local account reaches it. It runs with a clean environment, never the
daemon's (venue secrets). See `PostgresCluster`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import asyncpg

from candled import logs
from candled.errors import CandledError
from candled.store.cluster import PostgresCluster
from candled.store.database import Database
from candled.store.migrations import migrate

log = logs.get("candled.store")
EMBEDDED_PORT = 54329  # names the socket file (.s.PGSQL.54329): `psql -p` in README
SOCKET_DIR = "pgsocket"  # under state_dir: `psql -h <state_dir>/pgsocket` in README
WAIT_CAP_S = 10.0
# A server that is down, starting or shutting down; not a refused login. Narrower
# than `database.UNAVAILABLE` on purpose: a wrong password is not waited out.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.CannotConnectNowError)


class StoppedWaiting(CandledError):
    """Told to stop while waiting for an unreachable database."""


@asynccontextmanager
async def embedded_dsn(dsn: str, state_dir: Path) -> AsyncIterator[str]:
    """Yield the DSN to use: `dsn`, or when it is empty an embedded cluster's
    under `state_dir` (`[database] dsn` and `[daemon] state_dir`)."""
    if dsn:
        yield dsn
        return
    state_dir = await asyncio.to_thread(state_dir.resolve)
    cluster = PostgresCluster(
        state_dir / "pgdata", port=EMBEDDED_PORT, socket_dir=state_dir / SOCKET_DIR
    )
    # A running daemon owns the server; a command run beside it (audit,
    # repair) adopts it and must leave it running.
    owned = not cluster.is_running()
    await asyncio.to_thread(cluster.start)
    log.info("embedded database " + ("started" if owned else "in use"),
             database=cluster.description, dsn=cluster.dsn)  # fmt: skip
    if not owned and cluster.listens_on_tcp():
        log.warning(
            "the embedded database was started by an earlier candled and still accepts "
            "TCP logins from any local user; restart the daemon to close that",
            data_dir=str(cluster.data_dir),
        )
    try:
        yield cluster.dsn
    finally:
        if owned:
            await asyncio.to_thread(cluster.stop)
            log.info("embedded database stopped")


async def _connect(
    dsn: str, stop: asyncio.Event | None, on_wait: Callable[[float], object] | None
) -> Database:
    """Connect. With `stop`, an unreachable server is retried (capped backoff)
    until it answers, or until `stop` is set (`StoppedWaiting`); `on_wait` is
    told each wait's length."""
    delay = 0.5
    while True:
        try:
            return await Database.connect(dsn)
        except _UNREACHABLE as e:
            if stop is None:
                raise
            log.warning("database unreachable; waiting for it", error=repr(e), retry_in_s=delay)
            if on_wait is not None:
                on_wait(delay)
        with suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
                raise StoppedWaiting
        delay = min(2 * delay, WAIT_CAP_S)


@asynccontextmanager
async def open_database(
    dsn: str,
    state_dir: Path,
    *,
    wait_unless: asyncio.Event | None = None,
    on_wait: Callable[[float], object] | None = None,
) -> AsyncIterator[Database]:
    """Connect to `dsn` (empty: the embedded database under `state_dir`),
    apply pending migrations, and yield the database. With
    `wait_unless`, wait for an unreachable database until that event is set."""
    async with embedded_dsn(dsn, state_dir) as reachable:
        db = await _connect(reachable, wait_unless, on_wait)
        try:
            async with db.pool.acquire() as conn:
                applied = await migrate(conn)
            info = await db.refresh_info()
            log.info("database ready", server=info.describe, migrations_applied=applied)
            if info.timescaledb is None:
                log.warning("TimescaleDB is not loaded: candles are stored in a plain table")
            yield db
        finally:
            await db.close()
