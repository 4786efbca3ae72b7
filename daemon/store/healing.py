"""Healing state in the store: audit results, gaps, repair attempts and the
empty-range tracker. The healer decides; this module only reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from candled.domain import SeriesKey, Timeframe
from candled.domain.ranges import Range
from candled.gaps import RepairState


class SeriesStatus(StrEnum):
    """What an audit concluded about a series (`series_status.status`, `/health`,
    `candled audit`); the healer's `classify` decides it. The values are the
    column's (a CHECK constraint lists them)."""

    OK = "OK"  # every settled bar is stored or confirmed empty
    DEGRADED = "DEGRADED"  # holes remain
    STALE = "STALE"  # the newest settled bars are missing for longer than the allowance
    MISSING = "MISSING"  # no bar stored at all


class RepairOutcome(StrEnum):
    """What one repair request said about a hole (`repair_attempts.outcome`)."""

    FILLED = "filled"  # bars of the hole came
    EMPTY = "empty"  # a complete answer without a bar of the hole
    ERROR = "error"  # no complete answer: it says nothing about what the venue has


def _bar_index_sql(tf: Timeframe) -> str:
    """A SQL expression numbering consecutive bars of `tf` consecutively."""
    if tf.is_monthly:
        # Only "1M" is a supported monthly timeframe.
        return (
            "(extract(year from ts AT TIME ZONE 'UTC') * 12"
            " + extract(month from ts AT TIME ZONE 'UTC'))::bigint"
        )
    return f"(extract(epoch from ts)::bigint / {tf.seconds})"


@dataclass(frozen=True)
class Islands:
    """The stored runs of a series in a range: what the audit subtracts from the expected bars."""

    runs: list[tuple[datetime, datetime]]  # (first, last) open times, both inclusive
    rows: int  # bars scanned


async def islands(
    conn: asyncpg.Connection, series_id: int, tf: Timeframe, start: datetime, end: datetime
) -> Islands:
    """Runs of consecutive present bars with start <= ts < end, computed in SQL
    (gaps and islands: bar index minus row number is constant along a run)."""
    rows = await conn.fetch(
        f"""SELECT min(ts) AS first_ts, max(ts) AS last_ts, count(*) AS n
            FROM (SELECT ts, {_bar_index_sql(tf)} - row_number() OVER (ORDER BY ts) AS grp
                  FROM candle_data
                  WHERE series_id = $1 AND ts >= $2 AND ts < $3) bars
            GROUP BY grp ORDER BY first_ts""",
        series_id,
        start,
        end,
    )
    return Islands([(r["first_ts"], r["last_ts"]) for r in rows], sum(r["n"] for r in rows))


@dataclass(frozen=True)
class SeriesRow:
    """A series' id, genesis and audit frontier: where the next audit starts."""

    id: int
    genesis: datetime | None
    audited_until: datetime | None  # None: the next audit scans everything
    last_full_audit: datetime | None
    purged_at: datetime | None  # the last delete of its candles (a trigger sets it)


async def series_row(
    conn: asyncpg.Connection, venue: str, symbol: str, tf: str
) -> SeriesRow | None:
    """The series' row, or None when nothing was ever stored for it."""
    r = await conn.fetchrow(
        """SELECT s.id, s.genesis_ts, s.purged_at, st.audited_until, st.last_full_audit_at
           FROM series s LEFT JOIN series_state st ON st.series_id = s.id
           WHERE s.venue = $1 AND s.symbol = $2 AND s.timeframe = $3""",
        venue, symbol, tf,
    )  # fmt: skip
    if r is None:
        return None
    return SeriesRow(
        r["id"], r["genesis_ts"], r["audited_until"], r["last_full_audit_at"], r["purged_at"]
    )


async def recorded_gaps(conn: asyncpg.Connection, series_id: int) -> list[Range]:
    """The holes the last audit found, which an incremental audit checks again."""
    rows = await conn.fetch(
        "SELECT start_ts, end_ts FROM series_gaps WHERE series_id = $1 ORDER BY start_ts",
        series_id,
    )
    return [(r["start_ts"], r["end_ts"]) for r in rows]


async def save_audit(
    conn: asyncpg.Connection,
    series_id: int,
    *,
    status: SeriesStatus,
    first_ts: datetime | None,
    last_ts: datetime | None,
    gaps: Sequence[tuple[datetime, datetime, int]],
    missing_bars: int,
    confirmed_empty_bars: int,
    expected_bars: int,
    audited_at: datetime,
    audited_until: datetime,
    full: bool,
    purged_at: datetime | None,
) -> None:
    """Record one audit. `purged_at` is what the series said when the audit
    began: if candles were deleted since, the audit may have read them before
    the delete, so the next audit must scan everything again."""
    async with conn.transaction():
        # What an audit found is derived data: a crash that loses the newest
        # audits loses nothing the next audit does not find again (and it then
        # starts from an older frontier). So the commit does not wait for the
        # WAL flush, which was most of an incremental audit's time (one fsync
        # a series).
        await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute("DELETE FROM series_gaps WHERE series_id = $1", series_id)
        await conn.executemany(
            "INSERT INTO series_gaps (series_id, start_ts, end_ts, bars) VALUES ($1, $2, $3, $4)",
            [(series_id, s, e, n) for s, e, n in gaps],
        )
        await conn.execute(
            """WITH purge AS (
                   SELECT purged_at IS NOT DISTINCT FROM $10::timestamptz AS unchanged
                   FROM series WHERE id = $1)
               INSERT INTO series_state (series_id, status, first_ts, last_ts, missing_bars,
                   confirmed_empty_bars, expected_bars, last_audit_at, audited_until,
                   last_full_audit_at)
               SELECT $1, $2, $3, $4, $5, $6, $7, $8::timestamptz,
                      CASE WHEN purge.unchanged THEN $9::timestamptz END,
                      CASE WHEN $11::boolean AND purge.unchanged THEN $8::timestamptz END
               FROM purge
               ON CONFLICT (series_id) DO UPDATE SET
                   status = EXCLUDED.status, first_ts = EXCLUDED.first_ts,
                   last_ts = EXCLUDED.last_ts, missing_bars = EXCLUDED.missing_bars,
                   confirmed_empty_bars = EXCLUDED.confirmed_empty_bars,
                   expected_bars = EXCLUDED.expected_bars,
                   last_audit_at = EXCLUDED.last_audit_at,
                   audited_until = EXCLUDED.audited_until,
                   last_full_audit_at = coalesce(EXCLUDED.last_full_audit_at,
                                                 series_state.last_full_audit_at)""",
            series_id, status, first_ts, last_ts, missing_bars, confirmed_empty_bars,
            expected_bars, audited_at, audited_until, purged_at, full,
        )  # fmt: skip


async def empty_states(conn: asyncpg.Connection, series_id: int) -> dict[Range, RepairState]:
    """Per window the venue answered empty: how often, when to ask next, whether confirmed."""
    rows = await conn.fetch(
        """SELECT start_ts, end_ts, empty_answers, next_attempt_at, confirmed_at
           FROM empty_ranges WHERE series_id = $1""",
        series_id,
    )
    return {
        (r["start_ts"], r["end_ts"]): RepairState(
            r["empty_answers"], r["next_attempt_at"], r["confirmed_at"] is not None
        )
        for r in rows
    }


async def save_empty_state(
    conn: asyncpg.Connection, series_id: int, window: Range, state: RepairState, now: datetime
) -> None:
    """Record a window's empty answers (none: forget the window)."""
    if state.empty_answers == 0:
        await conn.execute(
            "DELETE FROM empty_ranges WHERE series_id = $1 AND start_ts = $2 AND end_ts = $3",
            series_id, *window,
        )  # fmt: skip
        return
    await conn.execute(
        """INSERT INTO empty_ranges (series_id, start_ts, end_ts, empty_answers, first_empty_at,
               last_empty_at, next_attempt_at, confirmed_at)
           VALUES ($1, $2, $3, $4, $5::timestamptz, $5, $6, CASE WHEN $7::boolean THEN $5 END)
           ON CONFLICT (series_id, start_ts, end_ts) DO UPDATE SET
               empty_answers = EXCLUDED.empty_answers, last_empty_at = EXCLUDED.last_empty_at,
               next_attempt_at = EXCLUDED.next_attempt_at,
               confirmed_at = coalesce(empty_ranges.confirmed_at, EXCLUDED.confirmed_at)""",
        series_id, window[0], window[1], state.empty_answers, now, state.next_attempt_at,
        state.confirmed_empty,
    )  # fmt: skip


async def record_attempt(
    conn: asyncpg.Connection, series_id: int, window: Range, candles: int, outcome: RepairOutcome,
    detail: str | None, now: datetime,
) -> None:  # fmt: skip
    """Record one repair request and what came of it, in `repair_attempts`."""
    await conn.execute(
        """INSERT INTO repair_attempts (series_id, start_ts, end_ts, attempted_at, candles,
               outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        series_id, window[0], window[1], now, candles, outcome, detail,
    )  # fmt: skip


async def reset_genesis(conn: asyncpg.Connection, series_id: int) -> None:
    """Forget a series' genesis and the empty ranges concluded from it."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE series SET genesis_ts = NULL, genesis_evidence = NULL WHERE id = $1",
            series_id,
        )
        await conn.execute("DELETE FROM empty_ranges WHERE series_id = $1", series_id)
        await conn.execute(
            "UPDATE series_state SET audited_until = NULL WHERE series_id = $1", series_id
        )


async def audited_statuses(
    conn: asyncpg.Connection,
) -> dict[SeriesKey, tuple[SeriesStatus, int]]:
    """Per series, its last audit's status and missing bars (`series_status`)."""
    rows = await conn.fetch(
        "SELECT venue, symbol, timeframe, status, missing_bars FROM series_status"
    )
    return {
        SeriesKey(r["venue"], r["symbol"], r["timeframe"]): (
            SeriesStatus(r["status"]),
            int(r["missing_bars"] or 0),
        )
        for r in rows
    }
