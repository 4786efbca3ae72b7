"""The series table: ids for the writer, configured flags for the status view."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from candled.domain import DataProfile, SeriesKey


async def ensure_series(
    conn: asyncpg.Connection, keys: Iterable[SeriesKey]
) -> dict[SeriesKey, int]:
    """Ids for `keys`, creating rows for the ones not seen before."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        """WITH wanted AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                   AS w(venue, symbol, timeframe)
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
    ids = {SeriesKey(r["venue"], r["symbol"], r["timeframe"]): r["id"] for r in rows}
    missing = [k for k in keys if k not in ids]
    if missing:
        # Rows another transaction inserted while ours waited on them (the
        # conflict): committed now, but not in the statement's snapshot. A new
        # statement sees them (READ COMMITTED).
        rows = await conn.fetch(
            """SELECT s.id, s.venue, s.symbol, s.timeframe
               FROM series s
               JOIN unnest($1::text[], $2::text[], $3::text[]) AS w(venue, symbol, timeframe)
               USING (venue, symbol, timeframe)""",
            [k.venue for k in missing],
            [k.symbol for k in missing],
            [k.timeframe for k in missing],
        )
        ids.update({SeriesKey(r["venue"], r["symbol"], r["timeframe"]): r["id"] for r in rows})
    return ids


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


async def get_genesis(conn: asyncpg.Connection, key: SeriesKey) -> datetime | None:
    """Where the series' history starts, if known: nothing before it is ever asked for."""
    ts: datetime | None = await conn.fetchval(
        "SELECT genesis_ts FROM series WHERE venue = $1 AND symbol = $2 AND timeframe = $3",
        key.venue,
        key.symbol,
        key.timeframe,
    )
    return ts


async def set_genesis(
    conn: asyncpg.Connection, key: SeriesKey, ts: datetime, evidence: Mapping[str, object]
) -> None:
    """Record where a series' history starts, and how we know."""
    await ensure_series(conn, [key])
    await conn.execute(
        """UPDATE series SET genesis_ts = $4, genesis_evidence = $5::jsonb
           WHERE venue = $1 AND symbol = $2 AND timeframe = $3""",
        key.venue,
        key.symbol,
        key.timeframe,
        ts,
        json.dumps(evidence, default=str),
    )


async def stored_bounds(
    conn: asyncpg.Connection, keys: Iterable[SeriesKey]
) -> dict[SeriesKey, tuple[datetime, datetime]]:
    """Oldest and newest stored open time per series (two index probes each;
    series with no candles are absent)."""
    keys = list(keys)
    rows = await conn.fetch(
        """SELECT w.venue, w.symbol, w.timeframe, b.first_ts, b.last_ts
           FROM unnest($1::text[], $2::text[], $3::text[]) AS w(venue, symbol, timeframe)
           JOIN series s USING (venue, symbol, timeframe)
           CROSS JOIN LATERAL (
               SELECT (SELECT ts FROM candle_data WHERE series_id = s.id ORDER BY ts LIMIT 1)
                          AS first_ts,
                      (SELECT ts FROM candle_data WHERE series_id = s.id ORDER BY ts DESC LIMIT 1)
                          AS last_ts
           ) b
           WHERE b.first_ts IS NOT NULL""",
        [k.venue for k in keys],
        [k.symbol for k in keys],
        [k.timeframe for k in keys],
    )
    return {
        SeriesKey(r["venue"], r["symbol"], r["timeframe"]): (r["first_ts"], r["last_ts"])
        for r in rows
    }


@dataclass(frozen=True)
class SeriesMeta:
    """What the store knows about one series: its id, profile, calendar, and
    where its history starts (genesis, or the first stored bar when earlier
    or when no genesis is known)."""

    id: int
    profile: DataProfile
    calendar: str
    start: datetime | None


async def series_metadata(
    conn: asyncpg.Connection, keys: Sequence[SeriesKey]
) -> dict[SeriesKey, SeriesMeta]:
    """`SeriesMeta` of each of `keys` the store has a row for."""
    rows = await conn.fetch(
        """SELECT w.ord, s.id, s.profile, s.calendar, s.genesis_ts
           FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
               AS w(venue, symbol, timeframe, ord)
           JOIN series s USING (venue, symbol, timeframe)""",
        [k.venue for k in keys],
        [k.symbol for k in keys],
        [k.timeframe for k in keys],
    )
    found = {}
    for r in rows:
        # The first stored bar counts where it is older than the genesis: a
        # query a series with the genesis as a value, so that only the chunks
        # before it are planned. A probe without a time bound (or bound by a
        # column) plans every chunk of the hypertable: 0.3 ms each on a new
        # connection, which every `read_candles` is.
        if r["genesis_ts"] is None:
            first = await conn.fetchval(
                "SELECT ts FROM candle_data WHERE series_id = $1 ORDER BY ts LIMIT 1", r["id"]
            )
        else:
            first = await conn.fetchval(
                "SELECT ts FROM candle_data WHERE series_id = $1 AND ts < $2 ORDER BY ts LIMIT 1",
                r["id"], r["genesis_ts"],
            )  # fmt: skip
        start = min((t for t in (r["genesis_ts"], first) if t is not None), default=None)
        found[keys[r["ord"] - 1]] = SeriesMeta(
            r["id"], DataProfile(r["profile"]), r["calendar"], start
        )
    return found
