"""Growth benchmarks: the same operations against stores of growing size.

For each size (default 1M, 10M, 50M candles) a fresh database is migrated and
filled server-side (INSERT ... SELECT generate_series, week by week, over two
connections) with `1m` bars of SERIES series ending now, each series' genesis
at its first bar; a few random bars per series are deleted (holes for the
audit) and the table is VACUUM ANALYZEd, as a long-running store is. The
store grows in depth, not in series: 100 series x ~7 days at 1M, x ~70 days
at 10M, x ~347 days (50 chunks) at 50M. One series always holds at least
31 days, for the 30-day read. Then, in this order:

1. full audit (`Healer.audit(full=True)`, clock pinned 45 s after the last bar);
2. incremental audit after one more hour of bars (COPY), clock moved on
   (REPEATS times, the median);
3. start-up, as the daemon does it on a restart against this store: a new pool
   and migrations (`open_database`), `sync_configured`, the first (incremental)
   audit of a new `Healer` one minute later (REPEATS times, the median);
4. a 30-day read of one series (`candled.read_candles`, a new connection each
   time, as a researcher calls it; the median of READS);
5. corrections: CORRECTIONS existing bars with changed values, through
   `CandleStore.write` in writer batches: bars of the last day (as venues
   revise), then bars at random over the whole history;
6. the writer: NEW_CANDLES new bars (all series, minute by minute after the
   newest) through `CandleWriter` (its default batch size), and raw COPY of
   the same number of new bars (the next range) in the same batches, twice
   each in turn; the best of each.

Then one table: every figure per size and its ratio to the smallest size's.
Each size's database is dropped once measured.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from candled.config import SeriesSpec
from candled.domain import Candle, DataProfile, SeriesKey, Timeframe
from candled.healer import AuditResult, Healer
from candled.research import read_candles
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.provision import open_database
from candled.store.series import ensure_series, sync_configured
from candled.store.writer import CandleStore, CandleWriter

SIZES = (1_000_000, 10_000_000, 50_000_000)  # python -m bench growth --sizes 1M,10M,50M
SERIES = 100
TF = Timeframe.parse("1m")
READ_DAYS = 30
DELETED_PER_SERIES = 5
CORRECTIONS = 50_000
NEW_CANDLES = 1_000_000
WRITER_ROUNDS = 3
READS = 5
REPEATS = 3  # incremental audits and start-ups: the median
FILL_CONNECTIONS = 2
CHUNK = timedelta(days=7)  # candle_data's chunk interval (migrations/001)
_COLUMNS = ("series_id", "ts", "open", "high", "low", "close", "volume")
_FILL = """INSERT INTO candle_data (series_id, ts, open, high, low, close, volume)
SELECT s.id, to_timestamp(m * 60),
       10 + s.id + sin(m / 97.0), greatest(10 + s.id + sin(m / 97.0), 10 + s.id + sin((m + 1) / 97.0)) + 0.01,
       least(10 + s.id + sin(m / 97.0), 10 + s.id + sin((m + 1) / 97.0)) - 0.01,
       10 + s.id + sin((m + 1) / 97.0), 1 + m % 7
FROM unnest($1::int[], $2::bigint[]) AS s(id, first_minute)
CROSS JOIN LATERAL generate_series(greatest(s.first_minute, $3::bigint), $4::bigint - 1) AS m"""  # noqa: E501


def parse_sizes(text: str) -> tuple[int, ...]:
    """`1M,10M,50M` (also `500k`, `2500000`) as row counts."""
    sizes = []
    for part in text.split(","):
        part = part.strip().upper().replace("_", "")
        scale = {"K": 1_000, "M": 1_000_000}.get(part[-1:], 1)
        number = part[:-1] if scale != 1 else part
        try:
            value = int(float(number) * scale)
        except ValueError:
            raise ValueError(f"size {part!r}: expected e.g. 1M, 500k or 2500000") from None
        if value < SERIES * 1_000:
            raise ValueError(f"size {part!r}: at least {SERIES * 1_000:,} candles")
        sizes.append(value)
    return tuple(sizes)


def _label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


@dataclass
class Figures:
    """What one size measured; seconds unless the name says otherwise."""

    rows: int = 0
    chunks: int = 0
    fill_s: float = 0.0
    full_audit_s: float = 0.0
    full_rows_scanned: int = 0
    incremental_audit_s: float = 0.0
    startup: dict[str, float] = field(default_factory=dict)
    read_s: float = 0.0
    read_rows: int = 0
    corrections_recent_per_s: float = 0.0
    corrections_random_per_s: float = 0.0
    writer_per_s: float = 0.0
    copy_per_s: float = 0.0


@dataclass(frozen=True)
class Layout:
    """Which bars the store holds: per series id, its first bar; all end at `end`."""

    end: datetime
    first: dict[int, datetime]

    @property
    def rows(self) -> int:
        return sum(TF.count_bars(t, self.end) for t in self.first.values())


def _layout(size: int, ids: Sequence[int], end: datetime) -> Layout:
    """`size` bars over the series, equally deep, the first series at least READ_DAYS + 1 days."""
    read_bars = (READ_DAYS + 1) * 1_440
    depth = size // len(ids)
    first = {}
    if depth >= read_bars:
        first = {sid: TF.add(end, -depth) for sid in ids}
    else:
        rest = (size - read_bars) // (len(ids) - 1)
        first = {sid: TF.add(end, -(read_bars if i == 0 else rest)) for i, sid in enumerate(ids)}
    return Layout(end, first)


def _minute(ts: datetime) -> int:
    return int(ts.timestamp()) // 60


async def _fill(pool: asyncpg.Pool, layout: Layout) -> None:
    """INSERT ... SELECT the layout's bars, one chunk's week at a time (so each
    chunk's index is built in key order), over FILL_CONNECTIONS connections."""
    ids = sorted(layout.first)
    firsts = [_minute(layout.first[i]) for i in ids]
    start, stop = min(firsts), _minute(layout.end)
    week = int(CHUNK.total_seconds()) // 60
    weeks = [(max(start, w), min(stop, w + week)) for w in range(start - start % week, stop, week)]
    weeks.reverse()  # pop() takes the oldest first

    async def filler() -> None:
        async with pool.acquire() as conn:
            await conn.execute("SET synchronous_commit = off")
            while weeks:
                lo, hi = weeks.pop()
                await conn.execute(_FILL, ids, firsts, lo, hi)

    await asyncio.gather(*(filler() for _ in range(FILL_CONNECTIONS)))


def _bar(sid: int, ts: datetime, bump: float = 0.0) -> tuple[object, ...]:
    m = _minute(ts)
    o = 10 + sid + math.sin(m / 97.0) + bump
    c = 10 + sid + math.sin((m + 1) / 97.0) + bump
    return (sid, ts, o, max(o, c) + 0.01, min(o, c) - 0.01, c, 1.0 + m % 7)


def _candles(keys: dict[int, SeriesKey], start: datetime, n: int) -> list[Candle]:
    """`n` new bars from `start` on, minute by minute across every series (as they go live)."""
    out = []
    minutes = -(-n // len(keys))
    for i in range(minutes):
        ts = TF.add(start, i)
        for sid, key in keys.items():
            r = _bar(sid, ts)
            out.append(Candle(key, ts, *r[2:]))  # type: ignore[arg-type]
    return out[:n]


def _specs(keys: Sequence[SeriesKey], lookback: timedelta) -> dict[SeriesKey, SeriesSpec]:
    return {k: SeriesSpec(k, DataProfile.CRYPTO, "", live=True, lookback=lookback) for k in keys}


async def _audit(healer: Healer, full: bool) -> tuple[float, list[AuditResult]]:
    start = time.perf_counter()
    results = await healer.audit(full=full)
    return time.perf_counter() - start, results


def _say(text: str) -> None:
    print(f"    {text}", flush=True)


async def _measure(dsn: str, size: int) -> Figures:
    fig = Figures()
    db = await Database.connect(dsn, max_size=4)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        await db.refresh_info()
        keys = [SeriesKey("bench", f"G{i:03d}", str(TF)) for i in range(SERIES)]
        async with db.pool.acquire() as conn:
            id_of = await ensure_series(conn, keys)
        by_id = {id_of[k]: k for k in keys}
        end = TF.floor(datetime.now(UTC))
        layout = _layout(size, sorted(by_id), end)
        started = time.perf_counter()
        await _fill(db.pool, layout)
        await db.pool.executemany(
            "UPDATE series SET genesis_ts = $2 WHERE id = $1", list(layout.first.items())
        )
        rnd = random.Random(7)
        deleted: set[tuple[int, datetime]] = set()
        for sid, first in layout.first.items():
            bars = TF.count_bars(first, end)
            for i in rnd.sample(range(10, bars - 10), DELETED_PER_SERIES):
                deleted.add((sid, TF.add(first, i)))
        await db.pool.execute(
            """DELETE FROM candle_data c USING unnest($1::int[], $2::timestamptz[]) AS d(id, ts)
               WHERE c.series_id = d.id AND c.ts = d.ts""",
            [d[0] for d in deleted], [d[1] for d in deleted],
        )  # fmt: skip
        await db.pool.execute("VACUUM (ANALYZE) candle_data")
        fig.fill_s = time.perf_counter() - started
        fig.rows = await db.pool.fetchval("SELECT count(*) FROM candle_data")
        fig.chunks = await db.pool.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'candle_data'"
        ) if db.info.timescaledb else 0  # fmt: skip
        _say(f"filled {fig.rows:,} rows ({fig.chunks} chunks) in {fig.fill_s:.0f} s "
             f"(INSERT ... SELECT generate_series, holes, VACUUM ANALYZE)")  # fmt: skip

        # 1. full audit, every series' whole history (genesis to the newest bar).
        lookback = end - min(layout.first.values()) + timedelta(days=30)
        specs = _specs(keys, lookback)
        clock = [end + timedelta(seconds=45)]
        healer = Healer(db.pool, specs, interval=timedelta(minutes=15), clock=lambda: clock[0])
        fig.full_audit_s, results = await _audit(healer, full=True)
        fig.full_rows_scanned = sum(r.rows_scanned for r in results)
        missing = sum(r.missing_bars for r in results)
        _say(f"full audit: {fig.full_audit_s:.2f} s, {fig.full_rows_scanned:,} rows scanned, "
             f"{missing} missing bars (deleted {len(deleted)})")  # fmt: skip

        # 2. incremental audit after one more hour of bars (REPEATS times, the median).
        next_bar = end
        incremental = []
        for _ in range(REPEATS):
            next_bar = await _more_bars(db.pool, by_id, next_bar, 60)
            clock[0] += timedelta(hours=1)
            secs, results = await _audit(healer, full=False)
            incremental.append(secs)
        fig.incremental_audit_s = statistics.median(incremental)
        _say(f"incremental audit: median {fig.incremental_audit_s:.3f} s of "
             f"{', '.join(f'{t:.3f}' for t in incremental)}, "
             f"{sum(r.rows_scanned for r in results):,} rows scanned")  # fmt: skip

        # 3. start-up against this store, a minute later each time (one more bar
        # each series); the run of median total.
        runs = []
        for _ in range(REPEATS):
            next_bar = await _more_bars(db.pool, by_id, next_bar, 1)
            clock[0] += timedelta(minutes=1)
            runs.append(await _startup(dsn, specs, clock[0]))
        runs.sort(key=lambda r: r["total"])
        fig.startup = runs[len(runs) // 2]
        totals = ", ".join(f"{r['total']:.3f}" for r in runs)
        _say("start-up (median): " + ", ".join(f"{k} {v:.3f} s" for k, v in fig.startup.items())
             + f"; totals {totals}")  # fmt: skip

        # 4. one series' 30-day read.
        read_key = by_id[min(by_id)]
        lo = end - timedelta(days=READ_DAYS)
        times = []
        for _ in range(READS):
            t0 = time.perf_counter()
            frame = await asyncio.to_thread(read_candles, dsn, read_key, lo, end)
            times.append(time.perf_counter() - t0)
        fig.read_s, fig.read_rows = statistics.median(times), len(frame)
        _say(f"30-day read of {read_key}: {len(frame):,} rows, median {fig.read_s:.3f} s "
             f"of {', '.join(f'{t:.3f}' for t in times)}")  # fmt: skip

        # 5. corrections: existing bars, changed: of the last day, and anywhere.
        store = CandleStore(db.pool)
        day = {sid: max(first, end - timedelta(days=1)) for sid, first in layout.first.items()}
        for label, starts, bump in (("recent", day, 0.5), ("random", layout.first, 0.75)):
            picks = _picks(rnd, starts, end, deleted)
            rate, updated, batch = await _correct(store, by_id, picks, bump)
            setattr(fig, f"corrections_{label}_per_s", rate)
            _say(f"corrections ({label}): {len(picks):,} ({updated:,} updated) in batches of "
                 f"{batch:,}: {rate:,.0f}/s")  # fmt: skip

        # 6. the writer and raw COPY, new bars after the newest, alternately.
        next_ts = next_bar
        writer_rates, copy_rates = [], []
        for _ in range(WRITER_ROUNDS):
            for how in ("writer", "copy"):
                data = _candles(by_id, next_ts, NEW_CANDLES)
                next_ts = TF.next(max(c.ts for c in data))
                gc.collect()
                gc.freeze()  # keep the cyclic GC from re-scanning the input on every batch
                if how == "writer":
                    rate = await _via_writer(store, data)
                    writer_rates.append(rate)
                else:
                    ids = {k: i for i, k in by_id.items()}
                    rate = await _via_copy(db.pool, data, ids, CandleWriter(store).batch_size)
                    copy_rates.append(rate)
                gc.unfreeze()
                del data
                _say(f"{how}: {NEW_CANDLES:,} new candles, {rate:,.0f}/s")
        fig.writer_per_s, fig.copy_per_s = max(writer_rates), max(copy_rates)
    finally:
        await db.close()
    return fig


def _picks(
    rnd: random.Random,
    starts: dict[int, datetime],
    end: datetime,
    deleted: set[tuple[int, datetime]],
) -> list[tuple[int, datetime]]:
    """CORRECTIONS stored bars at random, each series' from its start in `starts` to `end`."""
    picks: set[tuple[int, datetime]] = set()
    sids = sorted(starts)
    while len(picks) < CORRECTIONS:
        sid = rnd.choice(sids)
        pick = (sid, TF.add(starts[sid], rnd.randrange(TF.count_bars(starts[sid], end))))
        if pick not in deleted:
            picks.add(pick)
    return sorted(picks, key=lambda p: (p[1], p[0]))  # in time order, as a venue revises


async def _correct(
    store: CandleStore, by_id: dict[int, SeriesKey], picks: list[tuple[int, datetime]], bump: float
) -> tuple[float, int, int]:
    """Write the picked bars with changed values in writer batches: (bars/s, updated, batch)."""
    corrections = [
        Candle(by_id[sid], ts, *_bar(sid, ts, bump)[2:])  # type: ignore[arg-type]
        for sid, ts in picks
    ]
    batch = CandleWriter(store).batch_size
    updated = 0
    t0 = time.perf_counter()
    for i in range(0, len(corrections), batch):
        updated += (await store.write(corrections[i : i + batch])).updated
    return len(corrections) / (time.perf_counter() - t0), updated, batch


async def _more_bars(
    pool: asyncpg.Pool, by_id: dict[int, SeriesKey], start: datetime, bars: int
) -> datetime:
    """COPY `bars` more bars of every series from `start` on; the open time after them."""
    opens = [TF.add(start, i) for i in range(bars)]
    await pool.copy_records_to_table(
        "candle_data", records=[_bar(sid, ts) for sid in by_id for ts in opens], columns=_COLUMNS
    )
    return TF.add(start, bars)


async def _startup(dsn: str, specs: dict[SeriesKey, SeriesSpec], at: datetime) -> dict[str, float]:
    """The daemon's start-up steps against the store, each timed, on a new pool."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="candled-growth-") as state_dir:
        async with open_database(dsn, Path(state_dir)) as db:
            t1 = time.perf_counter()
            out["connect+migrate"] = t1 - t0
            async with db.pool.acquire() as conn:
                await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs.items()})
            t2 = time.perf_counter()
            out["series sync"] = t2 - t1
            healer = Healer(db.pool, specs, interval=timedelta(minutes=15), clock=lambda: at)
            await healer.audit()
            t3 = time.perf_counter()
            out["first audit"] = t3 - t2
    out["total"] = t3 - t0
    return out


async def _via_writer(store: CandleStore, data: list[Candle]) -> float:
    writer = CandleWriter(store)
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(writer.run())
        for i in range(0, len(data), writer.batch_size):
            await writer.put(data[i : i + writer.batch_size])
        await writer.drain()
        runner.cancel()
    secs = time.perf_counter() - t0
    assert writer.totals.inserted == len(data), writer.totals
    return len(data) / secs


async def _via_copy(
    pool: asyncpg.Pool, data: list[Candle], ids: dict[SeriesKey, int], batch: int
) -> float:
    """Raw COPY, no conflict handling: the ceiling. The records are built (and
    sorted, as the writer's `prepare` does) inside the timing, as the writer's are."""
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, len(data), batch):
            records = sorted(
                (ids[c.series], c.ts, c.open, c.high, c.low, c.close, c.volume)
                for c in data[i : i + batch]
            )
            await conn.copy_records_to_table("candle_data", records=records, columns=_COLUMNS)
    return len(data) / (time.perf_counter() - t0)


# --- the table -------------------------------------------------------------------


def _rows(figs: dict[int, Figures]) -> list[tuple[str, list[float], str]]:
    """(figure, value per size, format) for the table."""
    f = list(figs.values())
    out = [
        ("rows in the store", [x.rows for x in f], ",.0f"),
        ("chunks", [x.chunks for x in f], ",.0f"),
        ("writer, new candles/s", [x.writer_per_s for x in f], ",.0f"),
        ("raw COPY, new candles/s", [x.copy_per_s for x in f], ",.0f"),
        ("writer / raw COPY", [x.writer_per_s / x.copy_per_s for x in f], ".2f"),
        ("corrections/s, bars of the last day", [x.corrections_recent_per_s for x in f], ",.0f"),
        ("corrections/s, bars anywhere", [x.corrections_random_per_s for x in f], ",.0f"),
        ("full audit, s", [x.full_audit_s for x in f], ".2f"),
        ("full audit, rows scanned", [x.full_rows_scanned for x in f], ",.0f"),
        ("full audit, us per row scanned",
         [1e6 * x.full_audit_s / max(1, x.full_rows_scanned) for x in f], ".2f"),
        ("incremental audit, s", [x.incremental_audit_s for x in f], ".3f"),
        (f"{READ_DAYS}-day read of one series, s", [x.read_s for x in f], ".3f"),
    ]  # fmt: skip
    for step in f[0].startup:
        out.append((f"start-up: {step}, s", [x.startup[step] for x in f], ".3f"))
    return out


def _table(figs: dict[int, Figures]) -> None:
    sizes = list(figs)
    base = _label(sizes[0])
    print(f"\n  growth table (ratio: to the {base} store's figure)")
    head = f"  {'figure':<38}" + "".join(f"{_label(s):>24}" for s in sizes)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for name, values, fmt in _rows(figs):
        cells = []
        for i, v in enumerate(values):
            text = format(v, fmt)
            if i > 0 and values[0]:
                text += f" ({v / values[0]:.2f}x)"
            cells.append(f"{text:>24}")
        print(f"  {name:<38}" + "".join(cells))
    _goals(figs)


def _goals(figs: dict[int, Figures]) -> None:
    sizes = list(figs)
    first, last = figs[sizes[0]], figs[sizes[-1]]
    at = _label(sizes[-1])
    ratio = last.writer_per_s / last.copy_per_s
    row_growth = last.full_rows_scanned / max(1, first.full_rows_scanned)
    audit_growth = last.full_audit_s / first.full_audit_s
    goals = [
        (f"writer >= 0.5x raw COPY at {at}", f"{ratio:.2f}x", ratio >= 0.5),
        (f"writer >= 150,000 candles/s at {at}", f"{last.writer_per_s:,.0f}/s",
         last.writer_per_s >= 150_000),
        ("full audit no worse than linear in rows scanned",
         f"time x{audit_growth:.1f} for rows x{row_growth:.1f}", audit_growth <= row_growth),
    ]  # fmt: skip
    for name, value in (
        ("incremental audit", lambda x: x.incremental_audit_s),
        (f"{READ_DAYS}-day read of one series", lambda x: x.read_s),
        ("start-up", lambda x: x.startup["total"]),
    ):
        growth = value(last) / value(first)
        goals.append((f"{name} within 2x, {_label(sizes[0])} to {at}", f"x{growth:.2f}",
                      growth <= 2.0))  # fmt: skip
    print("\n  goals:")
    for name, value, met in goals:
        print(f"  {name:<52} {value:>28}   met: {'yes' if met else 'NO'}")


async def _create(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run(dsn: str) -> None:
    """Needs a database on a cluster where it may create and drop others (one per size)."""
    print(
        f"growth benchmark: sizes {', '.join(_label(s) for s in SIZES)} of {TF!s} bars, "
        f"{SERIES} series; writer and COPY {NEW_CANDLES:,} new candles each "
        f"(best of {WRITER_ROUNDS})",
        flush=True,
    )
    figs: dict[int, Figures] = {}
    for size in SIZES:
        name = f"growth_{_label(size).lower().replace('.', '_')}"
        print(f"  {_label(size)} store:", flush=True)
        started = time.perf_counter()
        size_dsn = await _create(dsn, name)
        try:
            figs[size] = await _measure(size_dsn, size)
        finally:
            await _drop(dsn, name)
        _say(f"({time.perf_counter() - started:.0f} s for this size)")
    _table(figs)
