"""Venue state kept across restarts (bans)."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def get_banned_until(conn: asyncpg.Connection, venue: str) -> datetime | None:
    """The end of the venue's last recorded IP ban, so a restart honours it."""
    ts: datetime | None = await conn.fetchval(
        "SELECT banned_until FROM venue_state WHERE venue = $1", venue
    )
    return ts


async def set_banned_until(conn: asyncpg.Connection, venue: str, until: datetime) -> None:
    """Record a ban's end (a later end always wins) for every process and restart."""
    await conn.execute(
        """INSERT INTO venue_state (venue, banned_until) VALUES ($1, $2)
           ON CONFLICT (venue) DO UPDATE
           SET banned_until = greatest(venue_state.banned_until, EXCLUDED.banned_until),
               updated_at = now()""",
        venue,
        until,
    )
