"""Live polling for venues without a usable candle stream (`limits.live == "poll"`).

Shortly after each bar closes (`poll_delay`, so the venue has published it)
the poller fetches the bars that closed since its last poll, through the
backfill path and so through the venue's throttle. A poll that fails is
handed to the backfill queue as a hole to fetch, like the hole after a
stream reconnect, and polling goes on with the next bar.

A venue may answer that a bar is not final yet (OANDA's `complete: false`
until a price after the bar's end arrives; `JobResult.not_final`). Such a bar
is no hole and no empty bar: it is polled again every `repoll` until it
arrives or its settling time (`settling`, the venue's `settling_s`) has passed
since its close; then it is handed to the backfill queue as a hole (the heal
cycle asks again later, and never takes "not yet" for "empty"). Meanwhile the
bars that close later are polled on time, in the same window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from candled import clock, logs
from candled.backfill import BackfillJob, JobReason, JobResult
from candled.domain import SeriesKey

log = logs.get("candled.poller")
REPOLL = timedelta(seconds=5)  # a bar the venue has not finalised is asked for again this often


@dataclass
class _Track:
    """Where polling one series stands."""

    cursor: datetime  # open time of the oldest bar not yet answered final
    asked: datetime  # open time of the oldest bar never asked for (>= cursor)
    retry_at: datetime | None = None  # when to ask again for the bars from `cursor`


class Poller:
    """Fetches a polled venue's live bars over REST shortly after each one closes."""

    def __init__(
        self,
        run_job: Callable[[BackfillJob], Awaitable[JobResult]],
        submit: Callable[[BackfillJob], None],
        series: Sequence[SeriesKey],
        delay: timedelta,
        clock: Callable[[], datetime] = clock.now,
        *,
        settling: timedelta = timedelta(0),
        repoll: timedelta = REPOLL,
    ) -> None:
        self._run_job = run_job
        self._submit = submit
        self.delay = delay
        # How long after its close a bar may still be "not final" at the venue.
        self.settling = settling
        self.repoll = repoll
        self._clock = clock
        self._tracks: dict[SeriesKey, _Track] = {}
        self.failures = 0
        self.unsettled = 0  # bars still not final at their settling time, handed on as holes
        self.set_series(series)

    def set_series(self, series: Sequence[SeriesKey]) -> None:
        """Poll exactly `series`; a new one starts with the bar in progress
        (what closed before is the startup or reload catch-up's)."""
        now = self._clock()
        self._tracks = {
            k: self._tracks.get(k) or _Track(k.tf.floor(now), k.tf.floor(now)) for k in series
        }

    def _due(self, key: SeriesKey, track: _Track) -> datetime:
        """When the series is to be polled next: the next bar's close plus the
        delay, or sooner to ask again for bars that were not final."""
        due = key.tf.next(track.asked) + self.delay
        return due if track.retry_at is None else min(due, track.retry_at)

    def _next_poll_at(self) -> datetime | None:
        if not self._tracks:
            return None
        return min(self._due(k, t) for k, t in self._tracks.items())

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            due = self._next_poll_at()
            wait = 60.0 if due is None else (due - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)  # re-planned after each sleep: series may change
                continue
            now = self._clock()
            cutoff = now - self.delay  # bars that closed by then are due
            ready = {
                k: (t.cursor, max(t.asked, k.tf.floor(cutoff)))
                for k, t in self._tracks.items()
                if self._due(k, t) <= now
            }
            async with asyncio.TaskGroup() as tg:
                for key, (start, stop) in ready.items():
                    tg.create_task(self._poll(key, start, stop))

    async def _poll(self, key: SeriesKey, start: datetime, stop: datetime) -> None:
        job = BackfillJob(key, start, stop, JobReason.POLL)
        result = await self._run_job(job)
        track = self._tracks.get(key)  # None: removed by a reload meanwhile
        pending = result.not_final
        if pending is not None and start <= pending < stop:
            if track is None:
                return
            # The venue has not finalised the bars from `pending` on: no hole
            # yet, and certainly no empty bar. Ask again until they settle.
            give_up_at = key.tf.close_time(pending) + self.settling
            now = self._clock()
            if now < give_up_at:
                track.cursor = max(track.cursor, pending)
                track.asked = max(track.asked, stop)
                track.retry_at = min(now + self.repoll, give_up_at)
                log.debug("bars not final yet; polling them again", series=str(key),
                          start=pending.isoformat(),
                          retry_at=track.retry_at.isoformat())  # fmt: skip
                return
            self.unsettled += 1
            log.info("bars still not final after the venue's settling time; fetching them"
                     " as a hole", series=str(key), start=pending.isoformat(),
                     settling_s=self.settling.total_seconds())  # fmt: skip
            self._submit(BackfillJob(key, pending, stop, JobReason.RECONNECT))
        elif not result.complete:
            self.failures += 1
            log.warning("poll failed; fetching the bars as a hole", series=str(key),
                        start=start.isoformat(), error=result.error)  # fmt: skip
            self._submit(BackfillJob(key, start, stop, JobReason.RECONNECT))
        if track is not None:
            track.cursor = max(track.cursor, stop)
            track.asked = max(track.asked, stop)
            track.retry_at = None
