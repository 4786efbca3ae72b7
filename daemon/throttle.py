"""Per-venue request throttle: a token bucket, the venue's own accounting, bans,
and the BATCH limit on concurrent backfill requests.

The bucket refills `capacity` tokens per `period`; each request spends its
weight. Venues such as Binance count weight in fixed windows aligned to the
clock and report what they counted (`X-MBX-USED-WEIGHT-1M`): when that report
is ahead of our bucket we follow it until the window ends, so a burst that the
bucket would allow never exceeds what the venue allows in one window. A 429
empties the bucket until Retry-After; a 418 stops every request until the ban
ends (the caller persists the ban so that a restart honours it too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from daemon.venues import RateFacts

Clock = Callable[[], float]
# A little slack after a window boundary or a Retry-After, for clock skew.
_SKEW_S = 0.25


class VenueThrottle:
    def __init__(
        self,
        capacity: int,
        period_s: float,
        batch: int,
        *,
        clock: Clock = time.time,
        banned_until: float | None = None,
    ) -> None:
        self._clock = clock
        self.capacity = capacity
        self.period_s = period_s
        self._tokens = float(capacity)
        self._refilled_at = clock()
        self.blocked_until = 0.0  # 429: nothing before this (epoch seconds)
        self.banned_until = banned_until or 0.0  # 418
        # Venue-reported usage: (window end, weight used in it by the venue's count).
        self._window_end = 0.0
        self._window_used = 0
        self._batch = batch
        self._in_batch = 0
        self._batch_changed = asyncio.Condition()
        self.rate_limited = 0  # 429s seen
        self.bans = 0  # 418s seen

    def configure(self, capacity: int, period_s: float, batch: int) -> None:
        """Apply new limits (config reload) without losing current state."""
        self._refill()
        self._tokens = min(self._tokens, capacity)
        self.capacity, self.period_s, self._batch = capacity, period_s, batch

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    @property
    def banned(self) -> bool:
        return self._clock() < self.banned_until

    def _refill(self) -> None:
        now = self._clock()
        rate = self.capacity / self.period_s
        self._tokens = min(self.capacity, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now

    def delay(self, weight: int) -> float:
        """Seconds until a request of `weight` may go (0: now)."""
        now = self._clock()
        pause = max(self.banned_until, self.blocked_until) - now
        if pause > 0:
            return pause + _SKEW_S
        if now < self._window_end and self._window_used + weight > self.capacity:
            return self._window_end - now + _SKEW_S
        self._refill()
        if self._tokens >= weight:
            return 0.0
        return (weight - self._tokens) * self.period_s / self.capacity

    async def acquire(self, weight: int) -> None:
        """Wait until a request of `weight` may be sent, and spend its weight."""
        weight = min(weight, self.capacity)
        # Sleep, then look again: a response may have moved the goalposts meanwhile.
        while (wait := self.delay(weight)) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        self._tokens -= weight
        if self._clock() < self._window_end:
            self._window_used += weight

    def observe(self, facts: RateFacts) -> None:
        """Take in what a response said about the venue's accounting."""
        now = self._clock()
        if facts.used_weight is not None:
            window_end = (now // self.period_s + 1) * self.period_s
            if window_end != self._window_end or facts.used_weight > self._window_used:
                self._window_end, self._window_used = window_end, facts.used_weight
            self._refill()
            self._tokens = min(self._tokens, float(self.capacity - facts.used_weight))
        if facts.banned:
            self.bans += 1
            self.banned_until = max(self.banned_until, now + (facts.retry_after_s or 120.0))
        elif facts.rate_limited:
            self.rate_limited += 1
            self._tokens = 0.0
            self._refilled_at = now
            self.blocked_until = max(self.blocked_until, now + (facts.retry_after_s or 60.0))

    @asynccontextmanager
    async def batch_slot(self) -> AsyncIterator[None]:
        """Hold one of the venue's BATCH concurrent backfill slots."""
        async with self._batch_changed:
            await self._batch_changed.wait_for(lambda: self._in_batch < self._batch)
            self._in_batch += 1
        try:
            yield
        finally:
            async with self._batch_changed:
                self._in_batch -= 1
                self._batch_changed.notify_all()

    @property
    def in_batch(self) -> int:
        return self._in_batch
