"""Batched, idempotent writes of closed candles.

One flush = one transaction: COPY the (de-duplicated) batch into a temporary
staging table, then one INSERT ... ON CONFLICT DO UPDATE that rewrites a row
only when a value really changed. Writing a candle twice is a no-op; a newer
revision replaces the old one. See FACTS.md (asyncpg issues 749, 535, 761).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from daemon.domain import Candle, SeriesKey
from daemon.store.series import ensure_series

_STAGE_DDL = """CREATE TEMP TABLE IF NOT EXISTS candle_stage (
    series_id integer, ts timestamptz,
    open double precision, high double precision, low double precision,
    close double precision, volume double precision
) ON COMMIT DELETE ROWS"""
_STAGE_COLUMNS = ("series_id", "ts", "open", "high", "low", "close", "volume")
_UPSERT = """WITH up AS (
    INSERT INTO candle_data AS c (series_id, ts, open, high, low, close, volume)
    SELECT series_id, ts, open, high, low, close, volume FROM candle_stage
    ON CONFLICT (series_id, ts) DO UPDATE
    SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume
    WHERE (c.open, c.high, c.low, c.close, c.volume)
          IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM up"""


@dataclass(frozen=True)
class WriteResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
        )

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


class CandleStore:
    """Writes candle batches; caches series ids."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._ids: dict[SeriesKey, int] = {}

    async def write(self, candles: Iterable[Candle]) -> WriteResult:
        # Last revision wins inside one batch; duplicates would make the
        # upsert fail with "cannot affect row a second time".
        latest: dict[tuple[SeriesKey, object], Candle] = {}
        for c in candles:
            latest[(c.series, c.ts)] = c
        if not latest:
            return WriteResult()
        async with self._pool.acquire() as conn:
            missing = {k for k, _ in latest} - self._ids.keys()
            if missing:
                self._ids.update(await ensure_series(conn, missing))
            ids = self._ids
            records = sorted(
                (ids[c.series], c.ts, c.open, c.high, c.low, c.close, c.volume)
                for c in latest.values()
            )
            async with conn.transaction():
                await conn.execute(_STAGE_DDL)
                await conn.copy_records_to_table(
                    "candle_stage", records=records, columns=_STAGE_COLUMNS
                )
                row = await conn.fetchrow(_UPSERT)
        assert row is not None
        inserted, updated = row["inserted"], row["updated"]
        return WriteResult(inserted, updated, len(records) - inserted - updated)


class CandleWriter:
    """A bounded buffer in front of `CandleStore`, flushed by size or age.

    `put` waits while the buffer is full (back-pressure on the sources), so
    memory stays bounded however slow the database is.
    """

    def __init__(
        self,
        store: CandleStore,
        *,
        batch_size: int = 5_000,
        max_age: float = 0.25,
        capacity: int = 100_000,
    ) -> None:
        if capacity < batch_size:
            raise ValueError("capacity must be at least batch_size")
        self._store = store
        self.batch_size = batch_size
        self.max_age = max_age
        self.capacity = capacity
        self._buffer: list[Candle] = []
        self._oldest: float | None = None
        self._changed = asyncio.Condition()
        self.totals = WriteResult()
        self.batches = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def put(self, candles: Sequence[Candle]) -> None:
        """Queue candles for writing; waits while the buffer is full."""
        async with self._changed:
            for start in range(0, len(candles), self.batch_size):
                chunk = candles[start : start + self.batch_size]
                await self._changed.wait_for(
                    lambda n=len(chunk): len(self._buffer) + n <= self.capacity  # type: ignore[misc]
                )
                if not self._buffer:
                    self._oldest = time.monotonic()
                self._buffer.extend(chunk)
                self._changed.notify_all()

    async def run(self) -> None:
        """Flush forever; cancel to stop (then call `flush()` to drain)."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._buffer))
                assert self._oldest is not None
                wait = self._oldest + self.max_age - time.monotonic()
                if len(self._buffer) < self.batch_size and wait > 0:
                    try:
                        async with asyncio.timeout(wait):
                            await self._changed.wait_for(
                                lambda: len(self._buffer) >= self.batch_size
                            )
                    except TimeoutError:
                        pass
            await self._flush_once()

    async def flush(self) -> WriteResult:
        """Write everything buffered now."""
        result = WriteResult()
        while self._buffer:
            result += await self._flush_once()
        return result

    async def _flush_once(self) -> WriteResult:
        async with self._changed:
            batch = self._buffer[: self.batch_size]
            del self._buffer[: self.batch_size]
            self._oldest = time.monotonic() if self._buffer else None
        if not batch:
            return WriteResult()
        try:
            result = await self._store.write(batch)
        except BaseException:
            # Put the batch back in front so nothing is lost; the caller decides
            # whether to retry (the reliability issue adds the spool).
            async with self._changed:
                self._buffer[:0] = batch
                self._oldest = time.monotonic()
            raise
        async with self._changed:
            self._changed.notify_all()  # wake producers waiting for room
        self.totals += result
        self.batches += 1
        return result
