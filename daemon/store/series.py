"""The series table: ids for the writer, configured flags for the status view."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from daemon.domain import DataProfile, SeriesKey


async def ensure_series(conn: asyncpg.Connection, keys: Iterable[SeriesKey]) -> dict[SeriesKey, int]:
    """Ids for `keys`, creating rows for the ones not seen before."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        """WITH wanted AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS w(venue, symbol, timeframe)
           ), ins AS (
               INSERT INTO series (venue, symbol, timeframe)
               SELECT venue, symbol, timeframe FROM wanted
               ON CONFLICT (venue, symbol, timeframe) DO NOTHING
               RETURNING id, venue, symbol, timeframe
           )
           SELECT id, venue, symbol, timeframe FROM ins
           UNION ALL
           SELECT s.id, s.venue, s.symbol, s.timeframe
           FROM series s JOIN wanted w USING (venue, symbol, timeframe)""",
        [k.venue for k in keys],
        [k.symbol for k in keys],
        [k.timeframe for k in keys],
    )
    return {SeriesKey(r["venue"], r["symbol"], r["timeframe"]): r["id"] for r in rows}


async def sync_configured(
    conn: asyncpg.Connection, series: dict[SeriesKey, tuple[DataProfile, str]]
) -> dict[SeriesKey, int]:
    """Make the series table match the config: rows for every configured
    series (with profile and calendar), `configured = false` for the rest.
    Data of removed series is kept; only the status view hides them."""
    async with conn.transaction():
        ids = await ensure_series(conn, series)
        await conn.execute(
            """UPDATE series s
               SET profile = u.profile, calendar = u.calendar, configured = true
               FROM unnest($1::int[], $2::text[], $3::text[]) AS u(id, profile, calendar)
               WHERE s.id = u.id""",
            [ids[k] for k in series],
            [str(p) for p, _ in series.values()],
            [c for _, c in series.values()],
        )
        await conn.execute(
            "UPDATE series SET configured = false WHERE configured AND NOT id = ANY($1::int[])",
            list(ids.values()),
        )
    return ids
