"""Backfill workers: page through history windows with a venue's codec and
hand the candles to the writer. Every historical candle (lookback, reconnect
holes, repairs) takes this one path."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import asyncpg

from candled import clock, logs, metrics
from candled.domain import Candle, SeriesKey
from candled.errors import CandledError
from candled.fetch import Fetcher, FetchError, describe
from candled.store.database import UNAVAILABLE
from candled.store.series import get_genesis, set_genesis
from candled.venues import (
    CodecError,
    HttpRequest,
    RateFacts,
    RateLimitedAnswer,
    VenueCodec,
    VenueError,
)
from candled.venues.base import HistoryPage

log = logs.get("candled.backfill")
Sink = Callable[[Sequence[Candle]], Awaitable[None]]
Clock = Callable[[], datetime]
PAGES_PER_JOB = 10  # a long window is cut into jobs so that BATCH workers share it
_PAGE_TRIES = 3  # a malformed page is asked for again this many times
# A queued job that fails for a reason that may pass is queued again, after a
# pause that doubles, until it has run this often; the heal cycle finds the rest.
_JOB_TRIES = 4
_GENESIS_PROBES = (1, 10, 100)  # pages before an empty run that must be empty too
NOT_FINAL_RETRY_S = 5.0  # bars the venue has not finalised are asked for again this often
_KEPT_RESULTS = 1_000  # recent job results kept for inspection; the daemon runs for months
# Continuation pages followed for one request, where the venue cuts answers
# short and names the request for the rest (Alpaca: "may return less [than
# `limit`], even if there are more"). Pages of 50 bars fill a 9,999-bar window;
# reported crypto pages hold 126 and more.
MAX_CONTINUATIONS = 200


class EndlessPages(CandledError):
    """The venue still named a next page after `max_continuations` of them."""

    def __init__(self, msg: str, requests: int) -> None:
        super().__init__(msg)
        self.requests = requests  # sent for the request and its continuations


class JobReason(StrEnum):
    """Why a backfill job runs: it sets the job's place in the queue
    (`_PRIORITY`) and names the job in the log."""

    LIVE_GAP = "live-gap"  # a live stream skipped bars (a closing frame went missing)
    RECONNECT = "reconnect"  # what closed while no stream was open; bars not final yet
    REPAIR = "repair"  # the healer asks for a hole
    POLL = "poll"  # a polled venue's bar that just closed
    LOOKBACK = "lookback"  # a series' history, at start and when a reload adds it
    BACKFILL = "backfill"  # `candled backfill`


# Fresh holes first, then repairs; anything else (history) after.
_PRIORITY = {JobReason.LIVE_GAP: 0, JobReason.RECONNECT: 0, JobReason.REPAIR: 1}


# A job stops on these and reports them; the workers go on with the next job.
# The database's errors reach a job through genesis and a venue ban being
# recorded (`Fetcher.on_ban`).
_JOB_ERRORS: tuple[type[Exception], ...] = (
    FetchError, VenueError, CodecError, EndlessPages, *UNAVAILABLE,
)  # fmt: skip


@dataclass(frozen=True)
class BackfillJob:
    """A window of one series' history to fetch, and why (which sets its priority)."""

    series: SeriesKey
    start: datetime
    end: datetime
    reason: JobReason
    attempt: int = 0  # runs of this window that failed before


@dataclass(frozen=True)
class JobResult:
    """How a job went: what it stored and sent, and whether its window can be judged."""

    job: BackfillJob
    candles: int
    requests: int
    complete: bool  # False when the job stopped on an error
    error: str | None = None
    # The error may pass (a malformed page, retries run out, the database);
    # not the venue's answer that the request is wrong.
    transient: bool = False
    # The venue has not finalised the bars from here on (`HistoryPage.not_final`):
    # "not yet", never "empty". The job stopped there; the bars before it came
    # complete. Not complete, so that no one judges the window by this answer.
    not_final: datetime | None = None


def split_window(job: BackfillJob, page_size: int) -> list[BackfillJob]:
    """Cut a job into pieces of at most PAGES_PER_JOB pages, newest first."""
    tf = job.series.tf
    span = page_size * PAGES_PER_JOB
    pieces = []
    end = job.end
    while end > job.start:
        start = max(job.start, tf.add(tf.ceil(end), -span))
        pieces.append(BackfillJob(job.series, start, end, job.reason, job.attempt))
        end = start
    return pieces


class Backfiller:
    """Runs backfill jobs for one venue through its fetcher (and throttle)."""

    def __init__(
        self,
        codec: VenueCodec,
        fetcher: Fetcher,
        sink: Sink,
        pool: asyncpg.Pool,
        *,
        workers: int = 16,
        clock: Clock = clock.now,
        max_continuations: int = MAX_CONTINUATIONS,
        wanted: Callable[[SeriesKey], bool] = lambda _: True,
    ) -> None:
        self.codec = codec
        # Queued jobs of a series no longer wanted (handed to another
        # instance, removed by a reload) are skipped, not fetched.
        self._wanted = wanted
        self.fetcher = fetcher
        self._sink = sink
        self._pool = pool
        self._workers = workers
        self._clock = clock
        self._max_continuations = max_continuations
        # Fresh holes (a lost closing frame, a reconnect) jump ahead of deep
        # history: (priority, submission order, original's order, job).
        self._queue: asyncio.PriorityQueue[tuple[int, int, int, BackfillJob]] = (
            asyncio.PriorityQueue()
        )
        self._submitted = 0  # submission order of the next piece
        # Pieces not yet run, by the submission order of the job they belong
        # to (a retry counts as its original): what join() waits for.
        self._unfinished: collections.Counter[int] = collections.Counter()
        self._finished = asyncio.Condition()
        self._genesis: dict[SeriesKey, datetime] = {}
        # Per series, so that one venue's slow answer does not hold up another series.
        self._genesis_locks: collections.defaultdict[SeriesKey, asyncio.Lock] = (
            collections.defaultdict(asyncio.Lock)
        )
        self.results: collections.deque[JobResult] = collections.deque(maxlen=_KEPT_RESULTS)

    def submit(self, job: BackfillJob, *, retry_of: int | None = None) -> None:
        """Queue a window; long ones are split so that workers share them."""
        if job.end <= job.start:
            return
        for piece in split_window(job, self.codec.limits.page_size):
            priority = _PRIORITY.get(piece.reason, len(_PRIORITY))
            order, self._submitted = self._submitted, self._submitted + 1
            origin = order if retry_of is None else retry_of
            self._unfinished[origin] += 1
            self._queue.put_nowait((priority, order, origin, piece))

    @property
    def queued(self) -> int:
        """Job pieces waiting for a worker."""
        return self._queue.qsize()

    async def join(self) -> None:
        """Wait until every job submitted so far has run, its retries too.
        Jobs submitted later (a stream's gap fetches, polls) do not hold it
        up: on a venue whose stream keeps dropping there always are some."""
        before = self._submitted
        async with self._finished:
            await self._finished.wait_for(
                lambda: all(origin >= before for origin in self._unfinished)
            )

    async def run(self) -> None:
        """Run the workers until cancelled. Concurrency is bounded by the
        throttle's BATCH slots, not by the worker count."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            _, _, origin, job = await self._queue.get()
            try:
                if not self._wanted(job.series):
                    continue
                result = await self.run_job(job)
                self.results.append(result)
                if result.not_final is not None:
                    self._ask_again(job, result.not_final)
                elif result.error:
                    retry = result.transient and job.attempt + 1 < _JOB_TRIES
                    log.error("backfill job failed", series=str(job.series), error=result.error,
                              attempt=job.attempt + 1, retrying=retry)  # fmt: skip
                    if retry:
                        # Held by this worker, so that join() waits for the retry too.
                        await asyncio.sleep(2.0**job.attempt)
                        self.submit(dataclasses.replace(job, attempt=job.attempt + 1),
                                    retry_of=origin)  # fmt: skip
            finally:
                self._queue.task_done()
                async with self._finished:
                    self._unfinished[origin] -= 1
                    if not self._unfinished[origin]:
                        del self._unfinished[origin]
                    self._finished.notify_all()

    def _ask_again(self, job: BackfillJob, not_final: datetime) -> None:
        """Bars the venue has not finalised yet (no failure): asked for again
        every NOT_FINAL_RETRY_S until the venue's settling time has passed
        since the first one closed, then left to the heal cycle. No worker
        waits meanwhile, nor does join()."""
        settled_at = job.series.tf.close_time(not_final) + timedelta(
            seconds=self.codec.limits.settling_s
        )
        retry = self._clock() < settled_at
        log.info("bars not final at the venue yet", series=str(job.series),
                 start=not_final.isoformat(), retrying=retry)  # fmt: skip
        if retry:  # fresh bars: ahead of deep history in the queue
            again = dataclasses.replace(job, start=not_final, reason=JobReason.RECONNECT)
            asyncio.get_running_loop().call_later(NOT_FINAL_RETRY_S, self.submit, again)

    async def genesis(self, series: SeriesKey) -> datetime | None:
        """The series' first bar, asked of the venue once where it can answer.

        An unknown genesis (not listed yet, or a venue that cannot tell) is
        not cached: the next job looks again.
        """
        async with self._genesis_locks[series]:
            if series not in self._genesis:
                found = await self._load_genesis(series)
                if found is None:
                    return None
                self._genesis[series] = found
            return self._genesis[series]

    async def _load_genesis(self, series: SeriesKey) -> datetime | None:
        """Genesis only saves requests: while the database is down, a job goes
        on without it (its candles spool) and the next job looks again."""
        try:
            async with self._pool.acquire() as conn:
                stored = await get_genesis(conn, series)
        except UNAVAILABLE as e:
            log.warning("genesis unknown: database unavailable", series=str(series), error=repr(e))
            return None
        if stored is not None or not self.codec.limits.exact_genesis:
            return stored
        req = self.codec.genesis_request(series)
        first, _, _ = await self._ask(series, req)
        if not first:
            return None  # nothing listed yet; ask again next time
        evidence = {"method": "exact", "request": req.path, "params": dict(req.params),
                    "first_bar": first[0].ts.isoformat(),
                    "asked_at": self._clock().isoformat()}  # fmt: skip
        if not await self._record_genesis(series, first[0].ts, evidence):
            return None  # not cached: recorded by a later job
        return first[0].ts

    async def _record_genesis(
        self, series: SeriesKey, ts: datetime, evidence: Mapping[str, object]
    ) -> bool:
        """Persist a series' genesis; False while the database is unavailable."""
        try:
            async with self._pool.acquire() as conn:
                await set_genesis(conn, series, ts, evidence)
        except UNAVAILABLE as e:
            log.warning("genesis not recorded: database unavailable", series=str(series),
                        error=repr(e))  # fmt: skip
            return False
        log.info("genesis recorded", series=str(series), genesis=ts.isoformat(),
                 method=evidence["method"])  # fmt: skip
        return True

    async def run_job(self, job: BackfillJob, seen: set[datetime] | None = None) -> JobResult:
        """Fetch every bar of the job's window, oldest page first; add the open
        times received to `seen` (the healer judges each hole by them)."""
        requests = candles = 0
        try:
            genesis = await self.genesis(job.series)
            tf, limits = job.series.tf, self.codec.limits
            cursor = tf.ceil(max(job.start, genesis) if genesis else job.start)
            served = limits.oldest_served(tf, self._clock())
            if served is not None:
                # Older bars are unreachable: the venue would answer with its newest ones.
                cursor = max(cursor, served)
            # Where the job's leading run of empty pages began (None: the first
            # page had data): empty pages then data may be the series' genesis.
            empty_from = cursor if genesis is None and not limits.exact_genesis else None
            # Bars that closed by the job's end: a window up to "now" ends at
            # the bar in progress, which no answer holds final (and OANDA
            # refuses a `to` past its clock, which may be behind ours).
            end = tf.floor(job.end)
            while cursor < end:
                # A page spans at most page_size bars, so that a short answer
                # means "no more bars here", not "ask again" (sparse venues).
                stop = min(end, tf.add(cursor, limits.page_size))
                got, n_requests, not_final = await self._page(
                    job.series, cursor, stop, limits.page_size
                )
                requests += n_requests
                got = [c for c in got if cursor <= c.ts < stop]
                if got and empty_from is not None:
                    if empty_from < cursor:
                        requests += await self._probe_genesis(job.series, empty_from, got[0].ts)
                    empty_from = None
                if got:
                    await self._sink(got)
                    candles += len(got)
                    metrics.backfill_candles.labels(self.codec.venue).inc(len(got))
                    if seen is not None:
                        seen.update(c.ts for c in got)
                if not_final is not None and not_final < stop:
                    pending = max(cursor, not_final)
                    return JobResult(job, candles, requests, complete=False,
                                     error=f"bars from {pending.isoformat()} not final at the"
                                     " venue yet", transient=True,
                                     not_final=pending)  # fmt: skip
                cursor = stop
        except _JOB_ERRORS as e:
            if isinstance(e, EndlessPages):
                requests += e.requests
            # A venue that pages for ever is not asked again at once (each run
            # costs the whole bound in requests): the heal cycle finds the hole.
            transient = not isinstance(e, VenueError | EndlessPages) or isinstance(
                e, RateLimitedAnswer
            )
            # Ours say what happened and where; a library's OSError (aiohttp's
            # among them) is told by `describe`: its repr may hold the request.
            error = describe(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            return JobResult(job, candles, requests, complete=False, error=error,
                             transient=transient)  # fmt: skip
        return JobResult(job, candles, requests, complete=True)

    async def _probe_genesis(self, series: SeriesKey, empty_from: datetime, first: datetime) -> int:
        """The genesis heuristic for venues that cannot say where history starts:
        complete, empty answers from `empty_from` up to the bar `first` mark
        genesis at `first` once deeper probes are empty too: a page 1, 10 and
        100 pages before (a quiet spell on a sparse venue can outlast a page or
        two). Errors and timeouts raise before this is reached, so they never
        mark it."""
        tf, limits = series.tf, self.codec.limits
        reachable = limits.oldest_served(tf, self._clock())
        requests, probes = 0, []
        for pages in _GENESIS_PROBES:
            end = tf.add(empty_from, -(pages - 1) * limits.page_size)
            probe = (tf.add(end, -limits.page_size), end)
            if reachable is not None and probe[0] < reachable:
                return requests  # the venue no longer serves these bars: no proof either way
            got, n, not_final = await self._page(series, *probe, limits.page_size)
            requests += n
            if not_final is not None or any(probe[0] <= c.ts < probe[1] for c in got):
                return requests  # history goes deeper (or may): the empty run was a gap
            probes.append([t.isoformat() for t in probe])
        evidence = {"method": "heuristic", "empty_from": empty_from.isoformat(),
                    "first_bar": first.isoformat(), "probes": probes,
                    "asked_at": self._clock().isoformat()}  # fmt: skip
        if await self._record_genesis(series, first, evidence):
            self._genesis[series] = first
        return requests

    async def _page(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> tuple[list[Candle], int, datetime | None]:
        return await self._ask(series, self.codec.history_request(series, start, end, limit))

    async def _ask(
        self, series: SeriesKey, req: HttpRequest
    ) -> tuple[list[Candle], int, datetime | None]:
        """The candles of one request, the requests it took, and where the
        answer stops being final (`HistoryPage.not_final`). Where the venue
        cuts the answer short and names the request for the rest, that one is
        sent too, the same way, until the answer is whole: a short page then
        still means "no more bars here". At most `max_continuations` of them."""
        page, requests = await self._ask_once(series, req)
        candles = list(page.candles)
        not_final = page.not_final
        continuations = 0
        while page.next is not None:
            if continuations == self._max_continuations:
                raise EndlessPages(
                    f"the venue still named a next page (page_token) after"
                    f" {continuations} continuation pages of one request"
                    f" ({len(candles)} bars so far): the window is left for the heal cycle",
                    requests,
                )
            continuations += 1
            page, n = await self._ask_once(series, page.next)
            candles += page.candles
            requests += n
            if page.not_final is not None:
                not_final = min(not_final or page.not_final, page.not_final)
        if continuations:
            candles.sort(key=lambda c: c.ts)  # oldest first across the pages
            log.debug("answer followed over continuation pages", series=str(series),
                      pages=continuations + 1, candles=len(candles))  # fmt: skip
        return candles, requests, not_final

    async def _ask_once(self, series: SeriesKey, req: HttpRequest) -> tuple[HistoryPage, int]:
        """One page of an answer, and the requests it took: a malformed answer
        is counted and asked for again."""
        for attempt in range(1, _PAGE_TRIES + 1):
            async with self.fetcher.throttle.batch_slot():
                resp = await self.fetcher.fetch(req)
            try:
                return self.codec.parse_history_page(
                    series, req, resp.status, resp.body, self._clock()
                ), attempt
            except RateLimitedAnswer as e:
                # Refused in the body: the throttle holds every request to the
                # venue as it would for a 429, then this page is asked again.
                facts = RateFacts(None, e.retry_after_s, rate_limited=True, banned=False)
                self.fetcher.throttle.observe(facts)
                metrics.requests.labels(self.codec.venue, "rate-limited").inc()
                if attempt == _PAGE_TRIES:
                    raise
                log.warning("venue refused for its rate limit; waiting", series=str(series),
                            answer=e.msg)  # fmt: skip
            except CodecError:
                metrics.malformed.labels(self.codec.venue, "http").inc()
                if attempt == _PAGE_TRIES:
                    raise
                log.warning("malformed history page, asking again", series=str(series))
        raise AssertionError("unreachable")
