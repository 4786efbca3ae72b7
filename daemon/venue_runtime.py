"""Everything that runs for one configured venue: its throttle, HTTP fetcher,
backfill workers and WebSocket collector, wired to the shared writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from candled import clock, logs, metrics
from candled.backfill import Backfiller, BackfillJob, JobReason
from candled.collector import Collector, CollectorSettings
from candled.config import SeriesSpec, VenueConfig
from candled.domain import SeriesKey
from candled.domain.timeframe import EPOCH
from candled.fetch import Fetcher
from candled.intake import Intake
from candled.poller import Poller
from candled.store.database import UNAVAILABLE, Database
from candled.store.series import stored_bounds
from candled.store.venues import get_banned_until, set_banned_until
from candled.store.writer import CandleWriter
from candled.throttle import VenueThrottle

log = logs.get("candled.venue")


def key_source(venue: VenueConfig) -> str:
    """Where the venue's key comes from, for messages: the settings and the
    variable or file they name, never the key."""
    named = {
        "api_key_env": venue.api_key_env,
        "api_key_file": venue.api_key_file,
        "api_secret_env": venue.api_secret_env,
        "api_secret_file": venue.api_secret_file,
    }
    return ", ".join(f'{name} = "{value}"' for name, value in named.items() if value)


def catch_up_jobs(
    key: SeriesKey,
    bounds: tuple[datetime, datetime] | None,
    lookback_start: datetime,
    now: datetime,
    reason: JobReason,
    covered_until: datetime | None = None,
) -> list[BackfillJob]:
    """Windows that bring a series to `now` from `lookback_start`: the part
    before the oldest stored bar and the part after the newest, skipping what
    earlier jobs already cover (`covered_until`). Holes in between are the
    healer's to find."""
    start = lookback_start
    jobs = []
    if bounds is not None:
        first, last = bounds
        # Only a (re)started backfill reaches back; a reconnect needs the recent hole.
        if lookback_start < first and reason == JobReason.LOOKBACK:
            jobs.append(BackfillJob(key, lookback_start, first, reason))
        start = key.tf.next(last)
    if covered_until is not None:
        start = max(start, covered_until)
    if start < now:
        jobs.append(BackfillJob(key, start, now, reason))
    return jobs


class VenueRuntime:
    """One venue's throttle, fetcher, backfill workers and live source, run as one component."""

    def __init__(
        self,
        venue: VenueConfig,
        series: Sequence[SeriesSpec],
        db: Database,
        writer: CandleWriter,
    ) -> None:
        self.config = venue
        self.codec = venue.codec()
        self.series = {s.key: s for s in series}
        self.share = 1  # instances sharing the venue's budget (`shared_budget`)
        self._db = db
        self._writer = writer
        self.throttle = VenueThrottle(
            self._capacity(), venue.rate_period.total_seconds(), venue.batch,
            ip_capacity=venue.rate_capacity,
        )  # fmt: skip
        self.fetcher = Fetcher(
            venue.rest_url,
            self.codec,
            self.throttle,
            on_ban=self._persist_ban,
            on_response=lambda status: metrics.requests.labels(venue.name, str(status)).inc(),
        )
        self._released: set[SeriesKey] = set()  # series set_series took away
        self._rest_intake = Intake(writer.put, db.pool, lambda: self.series.keys(), "rest",
                                   released=lambda: self._released)  # fmt: skip
        self._ws_intake = Intake(writer.put, db.pool, self._live_set, "ws",
                                 released=lambda: self._released)  # fmt: skip
        self.backfiller = Backfiller(self.codec, self.fetcher, self._rest_intake, db.pool,
                                     wanted=lambda key: key in self.series)  # fmt: skip
        self.collector: Collector | None = None
        self.poller: Poller | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._covered_until: dict[SeriesKey, datetime] = {}
        self.backfill_queued = asyncio.Event()  # the startup backfill is queued

    def _streamed(self, key: SeriesKey) -> bool:
        """The venue has a stream, and it carries `key`'s timeframe."""
        stream = self.codec.stream
        return stream is not None and stream.has_stream(key)

    def _live(self) -> list[SeriesKey]:
        """Live series the venue streams."""
        return [k for k, s in self.series.items() if s.live and self._streamed(k)]

    def _live_set(self) -> set[SeriesKey]:
        return set(self._live())

    def _polled(self) -> list[SeriesKey]:
        """Live series the venue has no stream for: fetched after each close."""
        return [k for k, s in self.series.items() if s.live and not self._streamed(k)]

    def _start_live(self, tg: asyncio.TaskGroup) -> None:
        """Stream the live series the venue streams, poll the others."""
        if self._polled() and self.poller is None:
            settling = timedelta(seconds=self.codec.limits.settling_s)
            self.poller = Poller(self.backfiller.run_job, self.backfiller.submit, self._polled(),
                                 self.config.poll_delay, settling=settling)  # fmt: skip
            tg.create_task(self.poller.run())
        stream = self.codec.stream
        if self._live() and self.collector is None and stream is not None:
            settings = CollectorSettings(idle_timeout_s=self.config.idle_timeout.total_seconds(),
                                         key_source=key_source(self.config))  # fmt: skip
            self.collector = Collector(
                stream, self.config.ws_url, self._live(), self._ws_intake,
                self._hole_backfill, settings, on_gap=self._live_gap,
            )  # fmt: skip
            tg.create_task(self.collector.run())

    @property
    def stream_refused(self) -> str | None:
        """Why the venue keeps the stream down, for /health (`Collector.refusal`)."""
        return self.collector.refusal if self.collector is not None else None

    def _capacity(self) -> int:
        """This instance's part of the venue's budget."""
        if not self.config.shared_budget:
            return self.config.rate_capacity
        return max(1, self.config.rate_capacity // self.share)

    def set_share(self, members: int) -> None:
        """Take 1/`members` of the budget when the venue's budget is shared
        (`shared_budget`), as the cluster's live members come and go."""
        if members != self.share:
            self.share = members
            if self.config.shared_budget:
                log.info("venue budget shared", venue=self.config.name, members=members,
                         rate_capacity=self._capacity())  # fmt: skip
                self.configure(self.config)

    def honour_ban(self, until: datetime) -> None:
        """A 418 ban another instance recorded (`venue_state`): this IP's too."""
        if until.timestamp() > self.throttle.banned_until:
            self.throttle.banned_until = until.timestamp()
            log.warning("venue ban recorded by another instance; no request until it ends",
                        venue=self.config.name, until=until.isoformat())  # fmt: skip

    def configure(self, venue: VenueConfig) -> None:
        """Apply new limits (reload) to the running throttle and collector."""
        self.config = venue
        self.throttle.configure(self._capacity(), venue.rate_period.total_seconds(), venue.batch,
                                venue.rate_capacity)  # fmt: skip
        if self.collector is not None:
            self.collector.settings.idle_timeout_s = venue.idle_timeout.total_seconds()
        if self.poller is not None:
            self.poller.delay = venue.poll_delay

    async def set_series(self, specs: Sequence[SeriesSpec]) -> None:
        """Apply a reload's series (or a change of ownership): new ones
        backfill from the newest stored bar (and stream or poll), removed
        ones stop; untouched streams keep their connections."""
        old_keys, old_live = set(self.series), set(self._live())
        self.series = {s.key: s for s in specs}
        self._released = (self._released | old_keys) - self.series.keys()
        for key in old_keys - self.series.keys():
            # Not collected from now on: taken again later, it catches up
            # from the store, not from what was asked while it was ours.
            self._covered_until.pop(key, None)
        new_live = set(self._live())
        if self.collector is not None:
            await self.collector.remove(sorted(old_live - new_live))
            await self.collector.add(sorted(new_live - old_live))
        if self.poller is not None:
            self.poller.set_series(self._polled())
        if self._tg is not None:
            self._start_live(self._tg)  # a first streamed or polled series
        # Subscribed first, then backfilled up to now: no bar falls between.
        await self._catch_up([k for k in self.series if k not in old_keys], JobReason.LOOKBACK)

    async def _persist_ban(self, until: float) -> None:
        ends = datetime.fromtimestamp(until, UTC)
        log.error("venue banned this IP (418); pausing every request", venue=self.config.name,
                  until=ends.isoformat())  # fmt: skip
        async with self._db.pool.acquire() as conn:
            await set_banned_until(conn, self.config.name, ends)

    async def restore_ban(self, asked: asyncio.Event | None = None, *, cap_s: float = 10.0) -> None:
        """Honour a ban an earlier run persisted. While the database does not
        answer, requests go ahead and the lookup is retried (capped backoff)
        until it does; `asked` is set once the first lookup is over, however
        it ended."""
        delay, warned = 0.5, False
        while True:
            try:
                async with asyncio.timeout(5), self._db.pool.acquire() as conn:
                    until = await get_banned_until(conn, self.config.name)
                break
            except UNAVAILABLE as e:
                if not warned:
                    warned = True
                    log.warning("database unreachable; a persisted venue ban is unknown until it"
                                " answers, requests go ahead", venue=self.config.name,
                                error=repr(e))  # fmt: skip
            finally:
                if asked is not None:
                    asked.set()
            await asyncio.sleep(delay)
            delay = min(2 * delay, cap_s)
        if until is not None and until > clock.now():
            # A 418 seen meanwhile may end later: keep the later end.
            self.throttle.banned_until = max(self.throttle.banned_until, until.timestamp())
            log.warning("venue ban still in force; no request until it ends",
                        venue=self.config.name, until=until.isoformat())  # fmt: skip

    async def _catch_up(self, keys: Sequence[SeriesKey], reason: JobReason) -> None:
        try:
            async with asyncio.timeout(5), self._db.pool.acquire() as conn:
                bounds = await stored_bounds(conn, keys)
        except UNAVAILABLE as e:
            # The store cannot say where it ends: start from what earlier jobs
            # covered (the whole lookback where none did). The writer spools.
            log.warning("database unreachable; catching up from what was asked before",
                        reason=reason, error=repr(e))  # fmt: skip
            bounds = {}
        now = clock.now()
        for key in keys:
            start = key.tf.floor(now - self.series[key].lookback)
            # Queued jobs may not have written yet: trust them, don't ask twice.
            covered = self._covered_until.get(key)
            for job in catch_up_jobs(key, bounds.get(key), start, now, reason, covered):
                log.debug("catch-up", series=str(key), reason=reason, start=job.start.isoformat(),
                          end=job.end.isoformat(), stored=str(bounds.get(key)))  # fmt: skip
                self.backfiller.submit(job)
            # Bars that opened before this one had closed when the jobs were
            # queued; the bar in progress is not covered (its close may come
            # neither live nor in the answer).
            self._covered_until[key] = max(covered or EPOCH, key.tf.floor(now))

    def _live_gap(self, key: SeriesKey, start: datetime | None, end: datetime) -> None:
        """A closing frame went missing on a live stream (or a stream's first
        bar arrived): fetch the bars before it now, except those a catch-up
        already asked for."""
        covered = self._covered_until.get(key)
        if start is None:
            if covered is None:
                return  # nothing asked for yet: the startup catch-up will be
            start = covered
        elif covered is not None:
            start = max(start, covered)
        self._covered_until[key] = max(covered or end, end)
        if start >= end:
            return
        log.info("live stream skipped bars; fetching them", series=str(key),
                 start=start.isoformat(), end=end.isoformat())  # fmt: skip
        self.backfiller.submit(BackfillJob(key, start, end, JobReason.LIVE_GAP))

    async def _hole_backfill(self, keys: Sequence[SeriesKey]) -> None:
        """After a (re)connect: fetch what closed while no stream was open."""
        try:
            await self._catch_up(keys, JobReason.RECONNECT)
        except Exception as e:  # the stream must not die for a failed lookup
            log.error("could not plan the reconnect backfill", error=repr(e))

    async def run(self) -> None:
        """Restore a recorded ban, backfill every series to now, then go live until cancelled."""
        async with self.fetcher, asyncio.TaskGroup() as tg:
            self._tg = tg
            # Requests wait for the first ban lookup (bounded by its timeout),
            # not for the database to come back.
            asked = asyncio.Event()
            tg.create_task(self.restore_ban(asked))
            await asked.wait()
            tg.create_task(self.backfiller.run())
            # The orchestrated backfill of every series; a stream's first
            # connect then only asks for what closed since.
            await self._catch_up(list(self.series), JobReason.LOOKBACK)
            self.backfill_queued.set()
            self._start_live(tg)
