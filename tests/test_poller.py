"""The live poller: one poll per closed bar, contiguous windows, failures handed
to the backfill queue. Runs on the wall clock with 1-second bars."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta

from candled import clock
from candled.backfill import BackfillJob, JobResult
from candled.domain import SeriesKey
from candled.poller import Poller

ONE_S = SeriesKey("coinbase", "BTC-USD", "1s")
TWO_S = SeriesKey("coinbase", "ETH-USD", "1s")
DELAY = timedelta(milliseconds=200)


async def run_until(poller: Poller, done: Callable[[], bool], within: float = 30) -> None:
    """Run the poller until `done()`; `within` seconds only stop a hang."""
    async with asyncio.timeout(within), asyncio.TaskGroup() as tg:
        task = tg.create_task(poller.run())
        while not done():
            await asyncio.sleep(0.05)
        task.cancel()


async def test_each_closed_bar_is_polled_once_after_its_close() -> None:
    jobs: list[tuple[BackfillJob, datetime]] = []

    async def run_job(job: BackfillJob) -> JobResult:
        jobs.append((job, clock.now()))
        return JobResult(job, 1, 1, complete=True)

    started = clock.now()
    poller = Poller(run_job, lambda job: None, [ONE_S, TWO_S], DELAY)
    await run_until(
        poller, lambda: all(sum(j.series == k for j, _ in jobs) >= 3 for k in (ONE_S, TWO_S))
    )

    for key in (ONE_S, TWO_S):
        windows = [(job.start, job.end) for job, _ in jobs if job.series == key]
        assert windows, f"{key} never polled"
        # The first poll starts with the bar in progress when polling began ...
        assert windows[0][0] == key.tf.floor(started)
        # ... and each next one where the previous ended: nothing skipped, nothing twice.
        assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert len([j for j, _ in jobs if j.series == ONE_S]) >= 3
    for job, asked_at in jobs:
        assert job.reason == "poll"
        # Only bars that had closed (plus the delay) were asked for.
        assert job.end + DELAY <= asked_at
        assert job.series.tf.is_aligned(job.start) and job.series.tf.is_aligned(job.end)


async def test_a_failed_poll_becomes_a_hole_to_backfill_and_polling_goes_on() -> None:
    submitted: list[BackfillJob] = []
    polled: list[BackfillJob] = []

    async def run_job(job: BackfillJob) -> JobResult:
        polled.append(job)
        failing = len(polled) == 1
        return JobResult(job, 0, 3, complete=not failing, error="FetchError" if failing else None)

    poller = Poller(run_job, submitted.append, [ONE_S], DELAY)
    await run_until(poller, lambda: len(polled) >= 2)

    assert len(submitted) == 1
    hole = submitted[0]
    assert (hole.series, hole.start, hole.end) == (ONE_S, polled[0].start, polled[0].end)
    assert hole.reason == "reconnect"  # jumps ahead of deep history in the queue
    assert len(polled) >= 2 and polled[1].start == polled[0].end
    assert poller.failures == 1


async def test_series_added_and_removed_on_reload() -> None:
    polled: list[BackfillJob] = []

    async def run_job(job: BackfillJob) -> JobResult:
        polled.append(job)
        return JobResult(job, 0, 1, complete=True)

    poller = Poller(run_job, lambda job: None, [ONE_S], DELAY)
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(poller.run())
        while not polled:
            await asyncio.sleep(0.05)
        poller.set_series([TWO_S])
        switched = clock.now()
        polled.clear()
        # Three bars of TWO_S polled: ONE_S's would have been too.
        while sum(job.series == TWO_S for job in polled) < 3:
            await asyncio.sleep(0.05)
        task.cancel()
    assert {job.series for job in polled} == {TWO_S}
    assert min(job.start for job in polled) >= TWO_S.tf.floor(switched)


async def test_a_bar_not_final_is_polled_again_until_it_arrives_and_not_skipped() -> None:
    """The venue says a closed bar is not final yet (OANDA's `complete:
    false`): the poller asks again, from that bar, until the answer is final;
    no hole is handed on, and the bars closing meanwhile come in the same windows."""
    polled: list[tuple[BackfillJob, datetime]] = []
    submitted: list[BackfillJob] = []
    first_bar: list[datetime] = []

    async def run_job(job: BackfillJob) -> JobResult:
        polled.append((job, clock.now()))
        if not first_bar:
            first_bar.append(job.start)
        # The first bar polled stays unfinished for its first three answers.
        if job.start == first_bar[0] and sum(j.start == first_bar[0] for j, _ in polled) <= 3:
            return JobResult(job, 0, 1, complete=False, error="not final",
                             not_final=first_bar[0])  # fmt: skip
        return JobResult(job, 1, 1, complete=True)

    repoll = timedelta(milliseconds=300)
    poller = Poller(run_job, submitted.append, [ONE_S], DELAY, settling=timedelta(seconds=30),
                    repoll=repoll)  # fmt: skip
    await run_until(poller, lambda: sum(j.start > first_bar[0] for j, _ in polled) >= 2)

    assert not submitted and poller.failures == 0 and poller.unsettled == 0
    again = [(j, at) for j, at in polled if j.start == first_bar[0]]
    assert len(again) == 4  # three "not yet" answers, then the final one
    # Each ask again came a repoll interval after the one before, not in a tight loop.
    assert all(b[1] - a[1] >= repoll * 0.9 for a, b in itertools.pairwise(again))
    # Nothing skipped: after the final answer the next window starts where it ended.
    windows = [(j.start, j.end) for j, _ in polled if j.start != first_bar[0]]
    assert windows[0][0] == again[-1][0].end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))


async def test_a_bar_still_not_final_at_its_settling_time_becomes_a_hole() -> None:
    polled: list[tuple[BackfillJob, datetime]] = []
    submitted: list[BackfillJob] = []

    async def run_job(job: BackfillJob) -> JobResult:
        polled.append((job, clock.now()))
        if job.start == polled[0][0].start:  # that bar never settles
            return JobResult(job, 0, 1, complete=False, error="not final", not_final=job.start)
        return JobResult(job, 1, 1, complete=True)

    settling = timedelta(seconds=1)
    poller = Poller(run_job, submitted.append, [ONE_S], DELAY, settling=settling,
                    repoll=timedelta(milliseconds=200))  # fmt: skip
    await run_until(
        poller, lambda: len(submitted) == 1 and polled[-1][0].start != polled[0][0].start
    )

    bar = polled[0][0].start
    (hole,) = submitted
    assert (hole.series, hole.start, hole.reason) == (ONE_S, bar, "reconnect")
    assert poller.unsettled == 1 and poller.failures == 0
    asked = [at for j, at in polled if j.start == bar]
    assert len(asked) >= 3  # asked again meanwhile ...
    # ... until its settling time had passed since its close, not after
    assert asked[-1] >= ONE_S.tf.close_time(bar) + settling
    assert asked[-2] < ONE_S.tf.close_time(bar) + settling
    # Polling went on where the hole ends.
    later = [j for j, _ in polled if j.start != bar]
    assert later[0].start == hole.end
