"""The gate between sources and the writer: sane candles of configured series
go on; the rest are quarantined with their reason and counted (but for late
answers about series this process gave up, which are dropped)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

import asyncpg

from candled import clock, logs, metrics
from candled.domain import Candle, SeriesKey
from candled.store.database import UNAVAILABLE
from candled.store.quarantine import quarantine
from candled.validate import problem

log = logs.get("candled.intake")


class Intake:
    """Validates what one source delivers before the writer sees it."""

    def __init__(
        self,
        put: Callable[[Sequence[Candle]], Awaitable[None]],
        pool: asyncpg.Pool,
        series: Callable[[], Collection[SeriesKey]],
        source: str,  # "rest" | "ws"
        released: Callable[[], Collection[SeriesKey]] = tuple,
    ) -> None:
        self._put = put
        self._pool = pool
        self._series = series
        # Series this process stopped collecting (handed to another instance,
        # removed by a reload): answers still on their way are no hostile
        # input, and the series' new owner fetches them itself.
        self._released = released
        self.source = source
        self.rejected = 0
        self.dropped = 0

    async def __call__(self, candles: Sequence[Candle]) -> None:
        """Pass sane candles of configured series on; quarantine the rest."""
        now = clock.now()
        wanted, released = self._series(), self._released()
        good: list[Candle] = []
        bad: list[tuple[Candle, str]] = []
        for c in candles:
            if c.series not in wanted and c.series in released:
                self.dropped += 1
                continue
            reason = problem(c, now) if c.series in wanted else "not a configured series"
            if reason is None:
                good.append(c)
            else:
                bad.append((c, reason))
        if bad:
            await self._reject(bad)
        if good:
            await self._put(good)

    async def _reject(self, bad: Sequence[tuple[Candle, str]]) -> None:
        self.rejected += len(bad)
        for c, reason in bad:
            metrics.candles_rejected.labels(c.series.venue, reason).inc()
        log.warning("candles quarantined", source=self.source, count=len(bad),
                    first=str(bad[0][0].series), reason=bad[0][1])  # fmt: skip
        try:
            await quarantine(self._pool, bad, self.source)
        except UNAVAILABLE as e:
            # The candles are invalid either way; losing the evidence is logged.
            log.error("could not record quarantined candles", error=repr(e), count=len(bad))
