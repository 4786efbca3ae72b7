"""The facts behind the coverage picture, read from the store.

For each configured series: the bars its calendar expects, the runs of bars
stored (the healer's islands query), the ranges the venue confirmed empty and
its genesis; `candled.coverage` classifies and draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg

from candled import calendars
from candled.coverage import Coverage, SeriesFacts, build
from candled.domain import DataProfile, SeriesKey
from candled.gaps import SETTLE, settle_time
from candled.store.healing import empty_states, islands, series_row


class SeriesSpec(Protocol):
    """What the picture needs of a configured series (`candled.config.SeriesSpec` has it)."""

    @property
    def key(self) -> SeriesKey:
        """Which series, and so its timeframe's grid."""

    @property
    def profile(self) -> DataProfile:
        """The market profile, which says when bars are expected."""

    @property
    def calendar(self) -> str:
        """The exchange calendar for EQUITY and FUTURES ("" for the default)."""

    @property
    def lookback(self) -> timedelta:
        """How far back the picture reaches when no start is given."""


async def series_facts(
    conn: asyncpg.Connection,
    spec: SeriesSpec,
    start: datetime,
    now: datetime,
    settle: timedelta = SETTLE,
    overrides: calendars.Overrides | None = None,
) -> SeriesFacts:
    """What the store and calendar say about `spec` from `start` to `now`."""
    key, tf = spec.key, spec.key.tf
    lo, hi = tf.ceil(start), tf.floor(now)
    expected = calendars.expected_ranges(
        spec.profile, spec.calendar, tf, lo, hi, overrides=overrides
    )
    row = await series_row(conn, key.venue, key.symbol, key.timeframe)
    if row is None:  # not synced yet: nothing stored, nothing confirmed
        return SeriesFacts(key, expected, [], [], None, tf.floor(now - settle))
    runs = await islands(conn, row.id, tf, lo, hi)
    confirmed = [r for r, st in (await empty_states(conn, row.id)).items() if st.confirmed_empty]
    return SeriesFacts(key, expected, runs.runs, confirmed, row.genesis, tf.floor(now - settle))


async def gather(
    pool: asyncpg.Pool,
    specs: Sequence[SeriesSpec],
    now: datetime,
    *,
    since: datetime | None = None,
    settling: Mapping[str, timedelta] | None = None,
    overrides: calendars.Overrides | None = None,
) -> Coverage:
    """The picture of every series in `specs` from `since` (default: the
    longest lookback among them) to `now`."""
    start = since or now - max((s.lookback for s in specs), default=timedelta(days=1))
    settling = settling or {}
    facts = []
    async with pool.acquire() as conn:
        for spec in specs:
            settle = settle_time(settling, spec.key.venue)
            facts.append(await series_facts(conn, spec, start, now, settle, overrides))
    return build(facts, start, now, now)
