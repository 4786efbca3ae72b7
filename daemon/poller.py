"""Live polling for venues without a usable candle stream (`limits.live == "poll"`).

Shortly after each bar closes (`poll_delay`, so the venue has published it)
the poller fetches the bars that closed since its last poll, through the
backfill path and so through the venue's throttle. A poll that fails is
handed to the backfill queue as a hole to fetch, like the hole after a
stream reconnect, and polling goes on with the next bar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from daemon import clock, logs
from daemon.backfill import BackfillJob, JobResult
from daemon.domain import SeriesKey

log = logs.get("candled.poller")


class Poller:
    def __init__(
        self,
        run_job: Callable[[BackfillJob], Awaitable[JobResult]],
        submit: Callable[[BackfillJob], None],
        series: Sequence[SeriesKey],
        delay: timedelta,
        clock: Callable[[], datetime] = clock.now,
    ) -> None:
        self._run_job = run_job
        self._submit = submit
        self.delay = delay
        self._clock = clock
        # Per series, the open time of the oldest bar not polled yet.
        self._cursor: dict[SeriesKey, datetime] = {}
        self.failures = 0
        self.set_series(series)

    def set_series(self, series: Sequence[SeriesKey]) -> None:
        """Poll exactly `series`; a new one starts with the bar in progress
        (what closed before is the startup or reload catch-up's)."""
        now = self._clock()
        self._cursor = {k: self._cursor.get(k) or k.tf.floor(now) for k in series}

    def _next_poll_at(self) -> datetime | None:
        if not self._cursor:
            return None
        return min(k.tf.next(cursor) for k, cursor in self._cursor.items()) + self.delay

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            due = self._next_poll_at()
            wait = 60.0 if due is None else (due - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)  # re-planned after each sleep: series may change
                continue
            cutoff = self._clock() - self.delay  # bars that closed by then are due
            ready = {
                k: k.tf.floor(cutoff) for k, c in self._cursor.items() if k.tf.next(c) <= cutoff
            }
            async with asyncio.TaskGroup() as tg:
                for key, stop in ready.items():
                    tg.create_task(self._poll(key, self._cursor[key], stop))

    async def _poll(self, key: SeriesKey, start: datetime, stop: datetime) -> None:
        job = BackfillJob(key, start, stop, "poll")
        result = await self._run_job(job)
        if not result.complete:
            self.failures += 1
            log.warning("poll failed; fetching the bars as a hole", series=str(key),
                        start=start.isoformat(), error=result.error)  # fmt: skip
            self._submit(BackfillJob(key, start, stop, "reconnect"))
        if key in self._cursor:  # not removed by a reload meanwhile
            self._cursor[key] = max(self._cursor[key], stop)
