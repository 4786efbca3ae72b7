"""The lease tables (migration 006): members, series leases, and the
notification that tells the other instances to look again.

Every expiry is judged by the database's clock (`now()`), the one clock all
instances share; callers pass durations, never instants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# NOTIFY channel: a member joined, left or handed series over; look again now.
CHANNEL = "candled_cluster"
# Members dead for this long are forgotten (their rows only serve `status`).
_FORGET_AFTER = "1 hour"


@dataclass(frozen=True)
class Identity:
    """What an instance says of itself in the members table."""

    instance: str
    host: str
    pid: int
    health: str  # its /health address
    version: str


@dataclass(frozen=True)
class Member:
    """One instance as the members table records it."""

    instance: str
    host: str
    pid: int
    health: str  # its /health address
    version: str
    started_at: datetime
    renewed_at: datetime
    expires_at: datetime
    live: bool  # expires_at is still ahead, by the database's clock
    expires_in_s: float  # from the database's now(): negative once dead


@dataclass(frozen=True)
class Lease:
    """One series lease as the table records it."""

    series: str
    holder: str
    acquired_at: datetime
    expires_at: datetime
    epoch: int
    live: bool


async def heartbeat(
    conn: asyncpg.Connection,
    member: Identity,
    ttl_s: float,
) -> list[Member]:
    """Record `member` alive for `ttl_s` more seconds; return the live members
    (it among them), ordered by instance id."""
    await conn.execute(
        """INSERT INTO cluster_members AS m
               (instance, host, pid, health, version, expires_at)
           VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
           ON CONFLICT (instance) DO UPDATE
           SET host = EXCLUDED.host, pid = EXCLUDED.pid, health = EXCLUDED.health,
               version = EXCLUDED.version, renewed_at = now(), expires_at = EXCLUDED.expires_at,
               started_at = CASE WHEN (m.host, m.pid) = (EXCLUDED.host, EXCLUDED.pid)
                                 THEN m.started_at ELSE now() END""",
        member.instance, member.host, member.pid, member.health, member.version, ttl_s,
    )  # fmt: skip
    await conn.execute(
        f"DELETE FROM cluster_members WHERE expires_at < now() - interval '{_FORGET_AFTER}'"
    )
    return [m for m in await members(conn) if m.live]


async def members(conn: asyncpg.Connection) -> list[Member]:
    """Every recorded member, live or not, ordered by instance id."""
    rows = await conn.fetch(
        """SELECT instance, host, pid, health, version, started_at, renewed_at, expires_at,
                  expires_at > now() AS live,
                  extract(epoch FROM expires_at - now())::float8 AS expires_in_s
           FROM cluster_members ORDER BY instance"""
    )
    return [Member(**dict(r)) for r in rows]


async def release(conn: asyncpg.Connection, holder: str, keep: Sequence[str]) -> set[str]:
    """Give up every lease `holder` has but those in `keep`; return the ones given up."""
    rows = await conn.fetch(
        """DELETE FROM series_leases
           WHERE holder = $1 AND NOT (series = ANY($2::text[]))
           RETURNING series""",
        holder,
        list(keep),
    )
    return {r["series"] for r in rows}


async def claim(
    conn: asyncpg.Connection, holder: str, series: Sequence[str], ttl_s: float
) -> set[str]:
    """Renew `holder`'s leases on `series` and take the free or expired ones,
    each for `ttl_s` seconds; return every series `holder` now holds of them.

    A lease another holder still has is left alone. Two instances claiming
    the same expired lease at once: the row lock makes the second re-check
    and find it taken. Rows are claimed in sorted order, so two claims never
    wait on each other in a cycle."""
    rows = await conn.fetch(
        """INSERT INTO series_leases AS l (series, holder, expires_at)
           SELECT s, $1, now() + make_interval(secs => $3)
           FROM unnest($2::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n
           ON CONFLICT (series) DO UPDATE
           SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
               epoch = l.epoch + (l.holder <> EXCLUDED.holder)::int,
               acquired_at = CASE WHEN l.holder = EXCLUDED.holder
                                  THEN l.acquired_at ELSE now() END
           WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
           RETURNING series""",
        holder,
        sorted(series),
        ttl_s,
    )
    return {r["series"] for r in rows}


async def leave(conn: asyncpg.Connection, instance: str) -> set[str]:
    """Drop `instance`'s leases and membership and tell the others; return the
    series it held."""
    async with conn.transaction():
        held = await release(conn, instance, [])
        await conn.execute("DELETE FROM cluster_members WHERE instance = $1", instance)
        await notify(conn, instance)
    return held


async def notify(conn: asyncpg.Connection, instance: str) -> None:
    """Ask every listening instance to look at members and leases again
    (delivered when the transaction commits)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, instance)


async def leases(conn: asyncpg.Connection) -> list[Lease]:
    """Every recorded lease, ordered by series."""
    rows = await conn.fetch(
        """SELECT series, holder, acquired_at, expires_at, epoch, expires_at > now() AS live
           FROM series_leases ORDER BY series"""
    )
    return [Lease(**dict(r)) for r in rows]


async def bans(conn: asyncpg.Connection) -> dict[str, datetime]:
    """Venue bans still in force, as any instance recorded them (`venue_state`)."""
    rows = await conn.fetch(
        "SELECT venue, banned_until FROM venue_state WHERE banned_until > now()"
    )
    return {r["venue"]: r["banned_until"] for r in rows}
