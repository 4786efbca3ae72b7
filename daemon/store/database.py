"""The asyncpg pool and what we know about the server behind it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# "The database is unavailable", the one definition: what a query (or taking
# a connection from the pool) raises when the database is down, restarting,
# refusing us or too slow. Every caller that goes on without the database
# (reports it, spools, retries later) catches this tuple and nothing narrower.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
)  # fmt: skip
STATEMENT_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """Which PostgreSQL and TimescaleDB the store runs on, for the log and `/health`."""

    server_version: str
    timescaledb: str | None  # extension version, None when absent
    license: str | None  # "apache" or "timescale" when the extension is loaded

    @property
    def describe(self) -> str:
        """One line for the log: the server, and whether candles live in a hypertable."""
        if self.timescaledb is None:
            return f"PostgreSQL {self.server_version} without TimescaleDB (plain tables)"
        return (
            f"PostgreSQL {self.server_version} with TimescaleDB {self.timescaledb} ({self.license})"
        )


async def server_info(conn: asyncpg.Connection) -> ServerInfo:
    """Ask the server which versions it runs and whether TimescaleDB is loaded."""
    row = await conn.fetchrow(
        """SELECT current_setting('server_version') AS server_version,
                  (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS ts,
                  current_setting('timescaledb.license', true) AS license"""
    )
    assert row is not None
    return ServerInfo(row["server_version"], row["ts"], row["license"] if row["ts"] else None)


class Database:
    """An asyncpg pool plus the server facts detected at connect time."""

    def __init__(self, pool: asyncpg.Pool, info: ServerInfo, dsn: str = "") -> None:
        self.pool = pool
        self.info = info
        self.dsn = dsn  # for a connection of its own (LISTEN), outside the pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 8) -> Database:
        """Open a pool whose every statement is bounded, and learn the server's facts."""
        # Every statement is bounded, so a hung server shows as an error
        # (UNAVAILABLE) instead of a task waiting for ever. Generous: a full
        # audit of a large series is one long query. The writer bounds its own
        # calls tighter (CandleStore timeout_s) and spools on a timeout.
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, command_timeout=STATEMENT_TIMEOUT_S,
            timeout=CONNECT_TIMEOUT_S,
        )  # fmt: skip
        try:
            async with pool.acquire() as conn:
                info = await server_info(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, info, dsn)

    async def refresh_info(self) -> ServerInfo:
        """Re-read the server facts (after migrations created the extension)."""
        async with self.pool.acquire() as conn:
            self.info = await server_info(conn)
        return self.info

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self.pool.close()
