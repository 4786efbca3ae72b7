"""The self-healing cycle: audit every series against its market profile,
repair holes newest first through the backfill path, keep statuses current.

Audit: the expected bar grid (calendars) minus the present islands (SQL)
gives the missing ranges, from the series' genesis or lookback start to the
newest bar that should have closed. It is incremental: a series re-scans only
from where its last audit ended (minus a safety margin) and re-checks the holes
it recorded before; `full=True` scans everything.

Repair: missing ranges become request windows (newest first, coalesced up to
the venue's page size, at most `max_fills` per series). A window the venue
answers with no data is retried with growing intervals and becomes
confirmed-empty after K empty answers; confirmed-empty ranges are excluded
from audits and never requested again, and never block older holes.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from candled import calendars, clock, logs, metrics
from candled.backfill import BackfillJob, JobReason, JobResult
from candled.config import Config, SeriesSpec
from candled.domain import SeriesKey, Timeframe
from candled.domain.ranges import Range, count_bars, merge_ranges, subtract_ranges
from candled.gaps import EmptyRangePolicy, RepairState, missing_ranges, plan_windows, settle_time
from candled.store import healing as store
from candled.store.healing import RepairOutcome, SeriesStatus
from candled.store.series import ensure_series, stored_bounds
from candled.venues import VenueLimits

log = logs.get("candled.healer")
Clock = Callable[[], datetime]
# Re-audit this far behind the last audit's end: late bars may still arrive.
SAFETY_BARS = 10
SAFETY_MIN = timedelta(minutes=10)
AUDIT_CONCURRENCY = 4


@dataclass(frozen=True)
class AuditResult:
    """What one audit found for one series: status, holes and bar counts."""

    key: SeriesKey
    status: SeriesStatus
    gaps: list[Range]
    missing_bars: int
    confirmed_empty_bars: int
    expected_bars: int
    genesis: datetime | None
    first_ts: datetime | None
    last_ts: datetime | None
    rows_scanned: int


@dataclass
class RepairReport:
    """What a repair pass did, for the log and `candled repair`'s summary."""

    requests: int = 0
    candles: int = 0
    empty: int = 0
    confirmed_empty: int = 0
    errors: int = 0
    per_series: dict[SeriesKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Repairer:
    """What the healer needs from a venue: its limits and the backfill path
    (which adds the open times it received to the set it is given)."""

    limits: VenueLimits
    run_job: Callable[[BackfillJob, set[datetime]], Awaitable[JobResult]]

    def confirm_after(self, hole: Range, tf: Timeframe, now: datetime, default: int) -> int:
        """Empty answers that confirm `hole` empty: one where an empty answer is
        the venue's last word (no bar without trades; history it no longer serves)."""
        served = self.limits.oldest_served(tf, now)
        if self.limits.sparse or (served is not None and hole[1] <= served):
            return 1
        return default


def stale_allowance(tf: Timeframe) -> timedelta:
    """How long the newest bars may be missing before a series is STALE rather
    than DEGRADED: two bars, at least five minutes (a stream reconnecting)."""
    return timedelta(seconds=max(tf.nominal_seconds * 2, 300))


def classify(
    *, has_data: bool, gaps: Sequence[Range], settled_end: datetime, tf: Timeframe
) -> SeriesStatus:
    """MISSING > STALE > DEGRADED > OK, from what one audit found.

    `gaps` are the holes up to `settled_end` (exclusive: bars that closed too
    recently to judge are not in them); confirmed-empty bars are not holes. A
    series is STALE when a hole runs up to `settled_end` and began more than
    the allowance before it: the venue has newer bars than the store. A tail
    the venue confirmed empty (a session's last minutes without trades) is up
    to date, however old the newest stored bar is.
    """
    if not has_data:
        return SeriesStatus.MISSING
    if gaps and gaps[-1][1] >= settled_end and settled_end - gaps[-1][0] > stale_allowance(tf):
        return SeriesStatus.STALE
    return SeriesStatus.DEGRADED if gaps else SeriesStatus.OK


def venue_settling(config: Config) -> dict[str, timedelta]:
    """Per venue, how long after a bar's close its answer about the bar is final."""
    return {v.name: timedelta(seconds=v.codec().limits.settling_s) for v in config.venues}


class Healer:
    """Audits every configured series and repairs its holes: the self-healing cycle."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        specs: Mapping[SeriesKey, SeriesSpec],
        *,
        interval: timedelta,
        full_audit_interval: timedelta = timedelta(hours=24),
        confirm_after: int = 3,
        overrides: calendars.Overrides | None = None,
        settling: Mapping[str, timedelta] | None = None,
        clock: Clock = clock.now,
    ) -> None:
        self._pool = pool
        # Per venue, how long after a bar's close its answer about the bar is final.
        self.settling = dict(settling or {})
        self.overrides = overrides
        self._alarmed: set[tuple[SeriesKey, datetime]] = set()  # ranges already reported
        self.specs = dict(specs)
        self.interval = interval
        self.full_audit_interval = full_audit_interval
        self.confirm_after = confirm_after
        self._clock = clock

    def configure(self, config: Config) -> None:
        """Follow the (possibly reloaded) config: series, interval, K, overrides."""
        h = config.healing
        self.specs, self.interval = config.series_specs(), h.interval
        self.full_audit_interval = h.full_audit_interval
        self.confirm_after, self.overrides = h.confirm_empty_after, h.overrides()
        self.settling = venue_settling(config)

    @classmethod
    def for_config(cls, pool: asyncpg.Pool, config: Config) -> Healer:
        """A healer set up from the config, as the daemon and one-shot commands use it."""
        healer = cls(pool, {}, interval=config.healing.interval)
        healer.configure(config)
        return healer

    def policy(self, confirm_after: int | None = None) -> EmptyRangePolicy:
        """When to ask again for a window answered empty, and when to confirm it empty."""
        # Half the cycle interval first, then doubling: K empty answers take K
        # cycles, and a venue that keeps answering empty is asked less often.
        return EmptyRangePolicy(self.interval / 2, confirm_after or self.confirm_after)

    def _keys(self, keys: Iterable[SeriesKey] | None) -> list[SeriesKey]:
        if keys is None:
            return sorted(self.specs)
        unknown = [str(k) for k in keys if k not in self.specs]
        if unknown:
            raise ValueError(f"not configured: {', '.join(unknown)}")
        return sorted(keys)

    # --- audit -----------------------------------------------------------------

    async def audit(
        self,
        keys: Iterable[SeriesKey] | None = None,
        *,
        full: bool = False,
        at: datetime | None = None,
    ) -> list[AuditResult]:
        """Audit the series (all configured ones by default) as of `at` (now).

        Incremental unless `full`; a series whose last full audit is older than
        `full_audit_interval`, or whose candles were deleted since its last
        audit, is scanned in full anyway. Audits that must agree (before and
        after a repair) pass the same `at`.
        """
        selected = self._keys(keys)
        now = at or self._clock()
        async with self._pool.acquire() as conn:
            await ensure_series(conn, selected)  # a configured series may have no row yet
            # Every series' oldest and newest bar in one query, planned once:
            # planning that unbounded probe costs every chunk of the hypertable,
            # which once a series was the audit's cost growing with the store.
            bounds = await stored_bounds(conn, selected)
        # A few series at a time: each audit is a chain of short round trips.
        slots = asyncio.Semaphore(AUDIT_CONCURRENCY)

        async def one(key: SeriesKey) -> AuditResult:
            async with slots, self._pool.acquire() as conn:
                return await self._audit_one(conn, key, full, now, bounds.get(key))

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(key)) for key in selected]
        return [t.result() for t in tasks]

    async def _audit_one(
        self,
        conn: asyncpg.Connection,
        key: SeriesKey,
        full: bool,
        now: datetime,
        bounds: tuple[datetime, datetime] | None,
    ) -> AuditResult:
        """Audit one series; `bounds` are its oldest and newest stored bars as
        the audit began (`stored_bounds`), widened here by the bars it scans."""
        spec, tf = self.specs[key], key.tf
        row = await store.series_row(conn, *_parts(key))
        assert row is not None
        full = (
            full
            or row.audited_until is None
            or row.last_full_audit is None
            or now - row.last_full_audit >= self.full_audit_interval
        )
        # Bars that closed moments ago may still be on their way to the store,
        # or not final at the venue yet (an empty answer about them would mean
        # "not yet", not "none"): judge them at a later audit.
        settle = settle_time(self.settling, key.venue)
        settled = calendars.last_expected_bar(
            spec.profile, spec.calendar, tf, now - settle, overrides=self.overrides
        )
        hi = tf.next(settled) if settled is not None else tf.floor(now - settle)
        lo = tf.ceil(now - spec.lookback)
        if row.genesis is not None:
            lo = max(lo, tf.ceil(row.genesis))
        lo = min(lo, hi)
        empty = await store.empty_states(conn, row.id)
        confirmed = [r for r, st in empty.items() if st.confirmed_empty]
        scan_from = lo
        if not full and row.audited_until is not None:
            margin = max(SAFETY_MIN, timedelta(seconds=tf.nominal_seconds * SAFETY_BARS))
            scan_from = min(hi, max(lo, tf.floor(row.audited_until - margin)))
        expected = calendars.expected_ranges(
            spec.profile, spec.calendar, tf, lo, hi, overrides=self.overrides
        )
        fresh = await store.islands(conn, row.id, tf, scan_from, hi)
        rows_scanned = fresh.rows
        runs = list(fresh.runs)
        gaps = missing_ranges(
            subtract_ranges(expected, [(lo, scan_from)]), fresh.runs, tf,
            genesis=row.genesis, confirmed_empty=confirmed,
        )  # fmt: skip
        self._alarm_outside_calendar(key, fresh.runs, expected)
        # Holes recorded before the re-scanned part: check whether they filled.
        for start, end in await store.recorded_gaps(conn, row.id):
            start, end = max(start, lo), min(end, scan_from)
            if start >= end:
                continue
            inside = await store.islands(conn, row.id, tf, start, end)
            rows_scanned += inside.rows
            runs += inside.runs
            gaps += missing_ranges([(start, end)], inside.runs, tf, genesis=row.genesis,
                                   confirmed_empty=confirmed)  # fmt: skip
        gaps = merge_ranges(gaps)
        # Bars stored since the bounds were read, and found by the scans, count too.
        stamps = [*(bounds or ()), *(ts for run in runs for ts in run)]
        first_ts, last_ts = (min(stamps), max(stamps)) if stamps else (None, None)
        missing = count_bars(gaps, tf)
        confirmed_bars = count_bars(
            [(max(s, lo), min(e, hi)) for s, e in confirmed if s < hi and e > lo], tf
        )
        status = classify(has_data=bool(stamps), gaps=gaps, settled_end=hi, tf=tf)
        expected_bars = count_bars(expected, tf)
        await store.save_audit(
            conn, row.id, status=status, first_ts=first_ts, last_ts=last_ts,
            gaps=[(s, e, tf.count_bars(s, e)) for s, e in gaps], missing_bars=missing,
            confirmed_empty_bars=confirmed_bars, expected_bars=expected_bars,
            audited_at=now, audited_until=hi, full=full, purged_at=row.purged_at,
        )  # fmt: skip
        metrics.gaps_found.labels(key.venue).inc(len(gaps))
        return AuditResult(key, status, gaps, missing, confirmed_bars, expected_bars,
                           row.genesis, first_ts, last_ts, rows_scanned)  # fmt: skip

    def _alarm_outside_calendar(
        self, key: SeriesKey, runs: Sequence[tuple[datetime, datetime]], expected: list[Range]
    ) -> None:
        """Bars where the calendar says the market is closed are kept (the venue
        is the source of truth) but reported once per range: the calendar may
        lack a session, and an override would fix it."""
        tf = key.tf
        present = [(tf.ceil(first), tf.next(last)) for first, last in runs]
        for start, end in subtract_ranges(present, expected):
            if (key, start) in self._alarmed:
                continue
            self._alarmed.add((key, start))
            bars = tf.count_bars(start, end)
            metrics.bars_outside_calendar.labels(key.venue).inc(bars)
            log.warning("bars where the calendar says the market is closed; kept. If the venue "
                        "is right, add the session to [healing].calendar_overrides",
                        series=str(key), start=start.isoformat(), end=end.isoformat(),
                        bars=bars, calendar=self.specs[key].calendar or "default")  # fmt: skip

    # --- repair ----------------------------------------------------------------

    async def repair(
        self,
        repairers: Mapping[str, Repairer],
        audits: Sequence[AuditResult],
        *,
        max_fills: int,
        on_request: Callable[[], object] | None = None,
    ) -> RepairReport:
        """Request the planned windows of every audited series with holes."""
        report = RepairReport()
        policy = self.policy()
        for audit in audits:
            repairer = repairers.get(audit.key.venue)
            if not audit.gaps or repairer is None:
                continue
            async with self._pool.acquire() as conn:
                row = await store.series_row(conn, *_parts(audit.key))
                states = await store.empty_states(conn, row.id) if row else {}
            if row is None:
                continue
            now = self._clock()
            waiting = [r for r, st in states.items() if not policy.is_due(st, now)]
            tf = audit.key.tf
            windows = plan_windows(audit.gaps, tf, repairer.limits.page_size, max_fills,
                                   skip=waiting)  # fmt: skip
            for w in windows:
                job = BackfillJob(audit.key, w.start, w.end, JobReason.REPAIR)
                seen: set[datetime] = set()
                result = await repairer.run_job(job, seen)
                report.requests += result.requests
                report.candles += result.candles
                if on_request is not None:
                    on_request()
                # Each hole in the window is judged by its own bars: one answer
                # can fill one hole and show another (a halt, say) empty.
                holes = [(max(a, w.start), min(b, w.end)) for a, b in audit.gaps
                         if a < w.end and b > w.start]  # fmt: skip
                stamps = sorted(seen)
                for hole in holes:
                    got = bisect_left(stamps, hole[1]) - bisect_left(stamps, hole[0])
                    confirm = repairer.confirm_after(hole, tf, now, self.confirm_after)
                    await self._record(row.id, hole, result, got, states, self.policy(confirm),
                                       report)  # fmt: skip
            report.per_series[audit.key] = len(windows)
        return report

    async def _record(
        self, series_id: int, hole: Range, result: JobResult, got: int,
        states: Mapping[Range, RepairState], policy: EmptyRangePolicy, report: RepairReport,
    ) -> None:  # fmt: skip
        """Remember what the venue's answer said about one hole (`got` of its bars came)."""
        now = self._clock()
        async with self._pool.acquire() as conn:
            if not result.complete:
                # Errors and timeouts say nothing about what the venue has.
                report.errors += 1
                await store.record_attempt(conn, series_id, hole, got, RepairOutcome.ERROR,
                                           result.error, now)  # fmt: skip
                return
            outcome = RepairOutcome.FILLED if got else RepairOutcome.EMPTY
            await store.record_attempt(conn, series_id, hole, got, outcome, None, now)
            state = policy.record(states.get(hole, RepairState()), got, now)
            await store.save_empty_state(conn, series_id, hole, state, now)
        if got:
            metrics.gaps_repaired.labels(result.job.series.venue).inc()
        else:
            report.empty += 1
            if state.confirmed_empty:
                report.confirmed_empty += 1
                metrics.gaps_confirmed_empty.labels(result.job.series.venue).inc()
                log.info("range confirmed empty", series=str(result.job.series),
                         start=hole[0].isoformat(), end=hole[1].isoformat(),
                         empty_answers=state.empty_answers)  # fmt: skip


def _parts(key: SeriesKey) -> tuple[str, str, str]:
    return key.venue, key.symbol, key.timeframe
