"""Batched, idempotent writes of closed candles.

One flush = one transaction: COPY the (de-duplicated) batch into a temporary
staging table, then one INSERT ... ON CONFLICT DO UPDATE that rewrites a row
only when a value really changed. Writing a candle twice is a no-op; a newer
revision replaces the old one. COPY has no conflict handling: one row already
stored aborts the whole COPY, so it cannot write into `candle_data` directly;
the staging table is the pattern asyncpg's maintainers give for a bulk upsert
(MagicStack/asyncpg#749, #535, #761).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from candled import clock, logs, metrics
from candled.domain import Candle, SeriesKey
from candled.store.database import UNAVAILABLE
from candled.store.quarantine import quarantine
from candled.store.series import ensure_series
from candled.store.spool import Spool, SpoolFull, SpoolPosition
from candled.validate import problem

log = logs.get("candled.writer")
_STAGE_DDL = """CREATE TEMP TABLE IF NOT EXISTS candle_stage (
    series_id integer, ts timestamptz,
    open double precision, high double precision, low double precision,
    close double precision, volume double precision
) ON COMMIT DELETE ROWS"""
_STAGE_COLUMNS = ("series_id", "ts", "open", "high", "low", "close", "volume")
_INSERT_NEW = """INSERT INTO candle_data (series_id, ts, open, high, low, close, volume)
SELECT series_id, ts, open, high, low, close, volume FROM candle_stage"""
_UPSERT = """WITH up AS (
    INSERT INTO candle_data AS c (series_id, ts, open, high, low, close, volume)
    SELECT series_id, ts, open, high, low, close, volume FROM candle_stage
    ON CONFLICT (series_id, ts) DO UPDATE
    SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume
    WHERE (c.open, c.high, c.low, c.close, c.volume) IS DISTINCT FROM
          (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM up"""


@dataclass(frozen=True)
class WriteResult:
    """What a write did: new bars, changed revisions, and rows already as stored."""

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
        """Every candle the write handled, whatever became of it."""
        return self.inserted + self.updated + self.unchanged


@dataclass(frozen=True)
class PreparedBatch:
    """Rows ready for COPY: one per (series_id, ts), in index order."""

    candles: Sequence[Candle]
    records: list[tuple[object, ...]]


class CandleStore:
    """Writes candle batches; caches series ids.

    Every call is bounded by `timeout_s` (pool acquire included): a hung
    database raises TimeoutError, which the writer counts as a failure like
    any other, instead of waiting forever.
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 30.0) -> None:
        self._pool = pool
        self.timeout_s = timeout_s
        self._ids: dict[SeriesKey, int] = {}

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with asyncio.timeout(self.timeout_s):
            conn = await self._pool.acquire()
            try:
                yield conn
            except (TimeoutError, asyncio.CancelledError):
                # Interrupted mid-query: releasing would wait for the server
                # to confirm the cancel, forever if it is hung. Drop it.
                conn.terminate()
                raise
            finally:
                await self._pool.release(conn)

    async def prepare(self, candles: Sequence[Candle]) -> PreparedBatch:
        """Turn candles into staging rows (CPU work; no transaction open)."""
        # Keyed by the candles' own key objects, so lookups hit on identity.
        keys = {c.series for c in candles}
        missing = keys - self._ids.keys()
        if missing:
            async with self._connection() as conn:
                self._ids.update(await ensure_series(conn, missing))
        ids = {k: self._ids[k] for k in keys}
        rows = ((ids[c.series], c.ts, c.open, c.high, c.low, c.close, c.volume) for c in candles)
        # Last revision wins inside one batch; duplicates would make the
        # upsert fail with "cannot affect row a second time".
        latest = {row[:2]: row for row in rows}
        return PreparedBatch(candles, sorted(latest.values()))

    async def execute(self, batch: PreparedBatch) -> WriteResult:
        """Write a prepared batch in one transaction."""
        if not batch.records:
            return WriteResult()
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_STAGE_DDL)
            await conn.copy_records_to_table(
                "candle_stage", records=batch.records, columns=_STAGE_COLUMNS
            )
            # Most batches are new bars only (live, backfill, repair): a plain
            # INSERT skips ON CONFLICT's speculative insertion, ~15% faster on
            # a hypertable. The first existing row aborts it (to the savepoint)
            # and the batch takes the upsert.
            try:
                async with conn.transaction():
                    await conn.execute(_INSERT_NEW)
                return WriteResult(inserted=len(batch.records))
            except asyncpg.UniqueViolationError:
                row = await conn.fetchrow(_UPSERT)
        assert row is not None
        inserted, updated = row["inserted"], row["updated"]
        return WriteResult(inserted, updated, len(batch.records) - inserted - updated)

    async def write(self, candles: Sequence[Candle]) -> WriteResult:
        """Prepare and write `candles` in one transaction."""
        return await self.execute(await self.prepare(candles))

    async def quarantine(self, rejected: Sequence[tuple[Candle, str]], source: str) -> None:
        """Record candles that failed validation, with their reasons, under the same bound."""
        async with self._connection() as conn:
            await quarantine(conn, rejected, source)


class CandleWriter:
    """Writes candles in the order they arrived, through a bounded memory
    buffer flushed by size or age and, with a spool, the disk behind it.

    Arrival order is what makes the newest revision of a bar win, since the
    upsert is last-writer-wins. The queue is the memory buffer, then the
    spool: once a write fails, everything held in memory moves to the spool
    (one atomic append) and later candles are appended behind it, until the
    spool is written back; then candles go through memory again.

    `put` waits while the buffer (or the spool) is full: back-pressure on the
    sources, so memory and disk stay bounded however long the database is
    away. `run` prepares the next batch while the previous one is being
    written (CPU and database overlap), commits batches strictly in order,
    and retries a failed write on its own clock.
    """

    def __init__(
        self,
        store: CandleStore,
        *,
        batch_size: int = 5_000,
        max_age: float = 0.05,
        capacity: int = 100_000,
        # A refused connection costs the database nothing: retry often, so that
        # writing resumes within seconds of its return.
        retry_cap_s: float = 5.0,
        spool: Spool | None = None,
    ) -> None:
        if capacity < batch_size:
            raise ValueError("capacity must be at least batch_size")
        self._store = store
        self.batch_size = batch_size
        self.max_age = max_age
        self.capacity = capacity
        self.retry_cap_s = retry_cap_s
        self._spool = spool
        # The newest candles are on disk: `put` appends behind them.
        self._spooling = spool is not None and spool.pending_batches > 0
        self.spooled = 0
        self._buffer: list[Candle] = []
        self._oldest: float | None = None
        self._changed = asyncio.Condition()
        self.totals = WriteResult()
        self.batches = 0
        self.failures = 0  # failed batch writes (each retried)
        self._error: str | None = None  # the last error while writes fail
        self._spool_full: str | None = None  # why `put` waits on the spool
        self._acks = 0  # spool acks so far: each may have freed space
        # Candles accepted by put() and confirmed written, for drain(); the
        # spool's head holds candles an earlier run accepted, not counted.
        self._accepted = 0
        self._written = 0
        self._earlier = spool.pending_candles if spool is not None else 0

    @property
    def pending(self) -> int:
        """Candles in the memory buffer, not yet handed to a write."""
        return len(self._buffer)

    @property
    def failing(self) -> str | None:
        """Why candles are not reaching the store, or None while they are."""
        return "; ".join(r for r in (self._spool_full, self._error) if r) or None

    async def drain(self) -> None:
        """Wait until everything put so far is written (the writer must be running)."""
        target = self._accepted
        async with self._changed:
            await self._changed.wait_for(lambda: self._written >= target)

    async def put(self, candles: Sequence[Candle]) -> None:
        """Queue candles for writing, behind every candle put before them.
        Waits while there is no room for them (memory, or the spool)."""
        async with self._changed:
            for start in range(0, len(candles), self.batch_size):
                chunk = candles[start : start + self.batch_size]
                await self._accept(chunk)
                self._accepted += len(chunk)
                self._changed.notify_all()

    async def _accept(self, chunk: Sequence[Candle]) -> None:
        """Put `chunk` at the tail of the queue (memory or spool), waiting
        for room. Called with `_changed` held."""
        while True:
            if not self._spooling:
                if len(self._buffer) + len(chunk) <= self.capacity:
                    if not self._buffer:
                        self._oldest = time.monotonic()
                    self._buffer.extend(chunk)
                    return
                await self._changed.wait()  # for room, or for the spool to take over
                continue
            try:
                await self._append(chunk)
            except (SpoolFull, OSError) as e:
                await self._wait_for_spool_space(e)
                continue
            if self._spool_full is not None:
                log.info("spool has room again; intake resumes")
                self._spool_full = None
            return

    async def _wait_for_spool_space(self, error: Exception) -> None:
        """The spool cannot take more: the producer waits (its source falls
        behind; catch-up and the heal cycle re-fetch what it missed) until
        the writer has written some of the spool back."""
        assert self._spool is not None
        metrics.spool_full_waits.inc()
        if self._spool_full is None:
            log.error("spool cannot take more candles; intake waits for the database",
                      error=str(error), spooled=self._spool.pending_candles)  # fmt: skip
        self._spool_full = (
            f"spool full ({self._spool.bytes} of {self._spool.max_bytes} bytes), intake waits"
            if isinstance(error, SpoolFull)
            else f"spool write failed ({error!r}), intake waits"
        )
        self._changed.notify_all()
        acks = self._acks
        await self._changed.wait_for(lambda: self._acks != acks or not self._spooling)

    async def _append(self, candles: Sequence[Candle]) -> None:
        assert self._spool is not None
        await asyncio.to_thread(self._spool.append, candles)
        self.spooled += len(candles)
        metrics.spooled_candles.inc(len(candles))

    async def _spill(self, reason: Exception) -> None:
        """Move the whole buffer to the (empty) spool in one append, so it stays
        ahead of what comes next. Called with `_changed` held."""
        try:
            await self._append(self._buffer)
        except (SpoolFull, OSError) as e:
            log.error("could not spool the buffer; it waits in memory", error=repr(e),
                      candles=len(self._buffer))  # fmt: skip
            return
        log.warning("database failing: buffered candles spooled to disk", error=repr(reason),
                    candles=len(self._buffer))  # fmt: skip
        self._buffer.clear()
        self._oldest = None
        self._spooling = True

    def _read_spool(
        self,
    ) -> tuple[list[Candle], list[tuple[Candle, str]], SpoolPosition | None]:
        """The oldest spooled candles, about a batch, split into the sane ones
        and the rejected ones with their reasons (in a worker thread: the
        checks cost some 20 us a candle: 0.1 s a batch, too long to hold the loop)."""
        assert self._spool is not None
        good: list[Candle] = []
        bad: list[tuple[Candle, str]] = []
        last = None
        # The spool's checksums prove nothing about the values (the file may
        # come from another build, or a hand): they are judged like live ones.
        now = clock.now()
        for position, batch in self._spool.replay():
            for c in batch:
                reason = problem(c, now)
                if reason is None:
                    good.append(c)
                else:
                    bad.append((c, reason))
            last = position
            if len(good) + len(bad) >= self.batch_size:
                break
        return good, bad, last

    async def _replay_spool(self) -> Exception | None:
        """Write back the oldest spooled candles; the error if that failed.
        Once the spool is empty, candles go through memory again."""
        spool = self._spool
        assert spool is not None
        good, bad, last = await asyncio.to_thread(self._read_spool)
        if last is None:
            async with self._changed:
                if not spool.pending_batches:  # else an append came in meanwhile
                    self._spooling = False
                    self._spool_full = None
                    self._changed.notify_all()
            return None
        result = WriteResult()
        try:
            for start in range(0, len(good), self.batch_size):
                result += await self._store.write(good[start : start + self.batch_size])
            # After the good ones: a retry rewrites those as no-ops, while a
            # quarantine that succeeded before a failed write would be doubled.
            # Failing, it leaves the batches unacked: the evidence stays on disk.
            if bad:
                await self._store.quarantine(bad, "spool")
        except UNAVAILABLE as e:
            return e
        if bad:
            for c, reason in bad:
                metrics.candles_rejected.labels(c.series.venue, reason).inc()
            log.warning("candles quarantined", source="spool", count=len(bad),
                        first=str(bad[0][0].series), reason=bad[0][1])  # fmt: skip
        async with self._changed:
            # Written: the store takes candles again. Said before the ack,
            # which empties the spool while this task waits on its thread.
            self._error = None
            before = spool.pending_candles
            await asyncio.to_thread(spool.ack, last)
            done = before - spool.pending_candles  # damaged records skipped count too
            self._acks += 1
        earlier = min(done, self._earlier)
        self._earlier -= earlier
        await self._record(result, done - earlier)
        log.info("spooled candles written", candles=len(good), left=spool.pending_candles)
        return None

    async def _take(self, interrupt: asyncio.Task[Exception | None] | None) -> list[Candle] | None:
        """Wait for a full batch, or for the oldest candle to reach max_age;
        None if `interrupt` (the write in flight) ends before any candle comes."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: bool(self._buffer) or (interrupt is not None and interrupt.done())
            )
            if not self._buffer:
                return None
            assert self._oldest is not None
            wait = self._oldest + self.max_age - time.monotonic()
            if len(self._buffer) < self.batch_size and wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait_for(lambda: len(self._buffer) >= self.batch_size)
            batch = self._buffer[: self.batch_size]
            del self._buffer[: self.batch_size]
            self._oldest = time.monotonic() if self._buffer else None
            self._changed.notify_all()  # wake producers waiting for room
            return batch

    async def _give_back(self, *batches: Sequence[Candle]) -> None:
        """Return unwritten batches to the front of the buffer, in order."""
        async with self._changed:
            self._buffer[:0] = [c for batch in batches for c in batch]
            if self._buffer:
                self._oldest = time.monotonic()
            self._changed.notify_all()

    async def _record(self, result: WriteResult, candles: int) -> None:
        self.totals += result
        self.batches += 1
        for name in ("inserted", "updated", "unchanged"):
            metrics.candles_written.labels(name).inc(getattr(result, name))
        async with self._changed:
            self._error = None
            self._written += candles
            self._changed.notify_all()  # wake drain()

    async def _prepare(self, candles: Sequence[Candle]) -> PreparedBatch | Exception:
        try:
            return await self._store.prepare(candles)
        except UNAVAILABLE as e:
            return e

    async def _execute(self, prepared: PreparedBatch) -> Exception | None:
        # Errors come back as values: a raising child would tear down the TaskGroup.
        try:
            with metrics.write_seconds.time():
                result = await self._store.execute(prepared)
        except UNAVAILABLE as e:
            async with self._changed:
                self._changed.notify_all()  # wake run() waiting in _take
            return e
        await self._record(result, len(prepared.candles))
        return None

    async def _failed(self, error: Exception, *unwritten: Sequence[Candle]) -> None:
        """A write failed: put what it held back in front and, with a spool,
        move everything in memory to it."""
        await self._give_back(*unwritten)
        async with self._changed:
            if self._spool is not None and self._buffer and not self._spooling:
                await self._spill(error)
            self._changed.notify_all()

    async def _backoff(self, error: Exception, failures: int) -> None:
        """Report the failure at once; retry on the writer's own clock."""
        self.failures += 1
        self._error = repr(error)
        delay = min(self.retry_cap_s, 0.1 * 2**failures)
        log.warning("candle write failed; retrying", error=repr(error),
                    retry_in_s=delay, pending=self.pending)  # fmt: skip
        await asyncio.sleep(delay)

    async def run(self) -> None:
        """Write forever; cancel to stop, then call `close()`.

        A batch that fails (database down, or hung past the store's
        timeout) goes back to the buffer, or with a spool to disk with the
        rest of the buffer, and is retried with capped exponential backoff;
        nothing is dropped, and no retry waits for new candles.
        """
        writing: tuple[asyncio.Task[Exception | None], Sequence[Candle]] | None = None
        taken: Sequence[Candle] | None = None
        failures = 0
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    error: Exception | None = None
                    # Each batch is cleared only once handed on (written, or
                    # given back): a cancel in between leaves it to `finally`.
                    if writing is not None and writing[0].done():
                        if (error := writing[0].result()) is not None:
                            await self._failed(error, writing[1])
                        writing = None
                    elif self._spooling:
                        error = await self._replay_spool()
                    elif (taken := await self._take(writing[0] if writing else None)) is None:
                        continue  # the write in flight ended first: look at it
                    else:
                        prepared = await self._prepare(taken)
                        if writing is not None:  # commit strictly in order
                            if (error := await writing[0]) is not None:
                                await self._failed(error, writing[1], taken)
                            writing = None
                        if error is None:
                            if isinstance(prepared, Exception):
                                error = prepared
                                await self._failed(error, taken)
                            else:
                                writing = (tg.create_task(self._execute(prepared)), taken)
                        taken = None
                    if error is None:
                        failures = 0
                        continue
                    failures += 1
                    await self._backoff(error, failures)
        finally:
            # Whatever is not known to be written goes back to the buffer;
            # close() rewrites it (a no-op where it did commit).
            unwritten = [taken or ()]
            if writing is not None:
                task, in_flight = writing
                if not task.done() or task.cancelled() or task.result() is not None:
                    unwritten.insert(0, in_flight)
            await self._give_back(*unwritten)

    async def close(self, deadline: float | None = None) -> WriteResult:
        """After `run` has stopped: write what waits in memory by `deadline`
        (event loop time). What is not written by then (the database down, hung or
        slow) goes to the spool, to be written after the restart; without a
        spool the error is raised."""
        result = WriteResult()
        try:
            async with asyncio.timeout_at(deadline):
                while self._buffer:
                    batch = self._buffer[: self.batch_size]
                    written = await self._store.write(batch)
                    del self._buffer[: len(batch)]
                    await self._record(written, len(batch))
                    result += written
        except UNAVAILABLE as e:
            if self._spool is None:
                raise
            async with self._changed:
                # The spool is empty whenever the buffer is not: it goes first.
                await self._spill(e)
            if self._buffer:
                log.error("candles lost at shutdown: neither written nor spooled; the heal "
                          "cycle re-fetches them", candles=len(self._buffer))  # fmt: skip
                self._buffer.clear()
        self._oldest = None
        return result

    async def flush(self) -> WriteResult:
        """`close()` without a time bound (the one-shot commands)."""
        return await self.close()
