"""Per-venue request throttle: a token bucket, the venue's own accounting, bans,
and the BATCH limit on concurrent backfill requests.

The bucket refills `capacity` tokens per `period`; each request spends its
weight. Venues such as Binance also count weight in fixed windows aligned to
the clock (`window_s`, one minute for `X-MBX-USED-WEIGHT-1M`). A bucket alone
can spend up to twice its capacity inside one such window (a full bucket plus
a window of refill), so the throttle also keeps a per-window count: its own
spending, raised to what the venue reports when the venue is ahead (other
processes on the same IP, requests it counted that we did not). A 429 empties
the bucket until Retry-After and teaches the throttle the venue's real budget
per window, so that it is not exceeded again; a 418 stops every request until
the ban ends (the caller persists the ban so that a restart honours it too).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from candled import clock
from candled.venues import RateFacts

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# A little slack after a window boundary or a Retry-After, for clock skew.
_SKEW_S = 0.25
_TOKEN_EPS = 1e-6


class VenueThrottle:
    """Decides when each request to one venue may go, so its rate limits are never tripped."""

    def __init__(
        self,
        capacity: int,
        period_s: float,
        batch: int,
        *,
        window_s: float = 60.0,
        clock: Clock = clock.epoch,
        sleep: Sleep = asyncio.sleep,
        banned_until: float | None = None,
        ip_capacity: int | None = None,
    ) -> None:
        self._clock = clock  # epoch seconds: venue windows and bans are wall-clock times
        self._sleep = sleep
        self.capacity = capacity
        # The whole IP's budget, which the venue's reported counts measure;
        # larger than `capacity` when instances share it (`shared_budget`).
        self.ip_capacity = ip_capacity or capacity
        self.period_s = period_s
        self.window_s = window_s
        self._tokens = float(capacity)
        self._refilled_at = clock()
        self.blocked_until = 0.0  # 429: nothing before this (epoch seconds)
        self.banned_until = banned_until or 0.0  # 418
        self._window_end = 0.0
        self._window_used = 0  # weight the IP spent in the current window, by the larger count
        self._window_own = 0  # weight this throttle let through in it
        self._window_accepted = 0  # the most the venue reported and still accepted in it
        self._learned_budget: int | None = None  # the venue's budget per window, from a 429
        self._batch = batch
        self._in_batch = 0
        self._batch_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.rate_limited = 0  # 429s seen
        self.bans = 0  # 418s seen

    def configure(
        self, capacity: int, period_s: float, batch: int, ip_capacity: int | None = None
    ) -> None:
        """Apply new limits (config reload) without losing current state.

        A budget learned from a 429 is forgotten: the operator has just said
        what the venue allows.
        """
        self._refill()
        self._tokens = min(self._tokens, capacity)
        self.capacity, self.period_s, self._batch = capacity, period_s, batch
        self.ip_capacity = ip_capacity or capacity
        self._learned_budget = None
        self._wake_batch_waiters()  # a raised batch frees slots at once

    @property
    def tokens(self) -> float:
        """Weight the bucket could spend now (shown in `/health`)."""
        self._refill()
        return self._tokens

    @property
    def banned(self) -> bool:
        """Whether a 418 ban is still running: nothing may be sent."""
        return self._clock() < self.banned_until

    @property
    def window_budget(self) -> float:
        """Weight the IP may spend in one venue window (what the venue counts)."""
        ours = self.ip_capacity * self.window_s / self.period_s
        return ours if self._learned_budget is None else min(ours, self._learned_budget)

    @property
    def own_window_budget(self) -> float:
        """Weight this throttle lets through in one venue window: all of the
        IP's budget, or its share when instances share it."""
        return min(self.capacity * self.window_s / self.period_s, self.window_budget)

    def _refill(self) -> None:
        now = self._clock()
        rate = self.capacity / self.period_s
        self._tokens = min(self.capacity, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now

    def _roll_window(self, now: float) -> None:
        if now >= self._window_end:
            self._window_end = (now // self.window_s + 1) * self.window_s
            self._window_used = self._window_accepted = self._window_own = 0

    def delay(self, weight: int) -> float:
        """Seconds until a request of `weight` may go (0: now)."""
        now = self._clock()
        pause = max(self.banned_until, self.blocked_until) - now
        if pause > 0:
            return pause + _SKEW_S
        self._roll_window(now)
        # A fresh window always admits one request, however small the budget.
        # The venue's count is the whole IP's: it is held against the IP's
        # budget, and what we spent against our share of it.
        if self._window_used and (
            self._window_used + weight > self.window_budget
            or self._window_own + weight > self.own_window_budget
        ):
            return self._window_end - now + _SKEW_S
        self._refill()
        # With a tolerance: float rounding after sleeping exactly the computed time
        # could leave a deficit too small for the (epoch-sized) clock to ever fill.
        if self._tokens >= weight - _TOKEN_EPS:
            return 0.0
        return (weight - self._tokens) * self.period_s / self.capacity

    async def acquire(self, weight: int) -> float:
        """Wait until a request of `weight` may be sent, spend its weight, and
        return the time (epoch seconds) it was let through."""
        weight = min(weight, self.capacity)
        # Sleep, then look again: a response may have moved the goalposts meanwhile.
        while (wait := self.delay(weight)) > 0:
            await self._sleep(wait)
        self._tokens -= weight
        self._window_used += weight
        self._window_own += weight
        return self._clock()

    def observe(self, facts: RateFacts, sent_at: float | None = None) -> None:
        """Take in what the response to a request sent at `sent_at` (epoch
        seconds) said about the venue's accounting."""
        now = self._clock()
        self._roll_window(now)
        window_start = self._window_end - self.window_s
        # A count from an earlier window says nothing about this one.
        current = sent_at is None or sent_at >= window_start
        if facts.used_weight is not None and current:
            self._window_used = max(self._window_used, facts.used_weight)
            if not (facts.rate_limited or facts.banned):
                self._window_accepted = max(self._window_accepted, facts.used_weight)
        if facts.banned:
            self.bans += 1
            self.banned_until = max(self.banned_until, now + (facts.retry_after_s or 120.0))
        elif facts.rate_limited:
            self.rate_limited += 1
            self._tokens = 0.0
            self._refilled_at = now
            wait = facts.retry_after_s if facts.retry_after_s is not None else self.window_s
            self.blocked_until = max(self.blocked_until, now + wait)
            # The venue refused more than it had accepted in this window: what it
            # accepted is its budget. (Its count includes refused requests, so the
            # 429's own count says less.) Nothing accepted: the budget was spent
            # by someone else, and there is nothing to learn.
            accepted = self._window_accepted
            if current and accepted:
                self._learned_budget = min(self._learned_budget or accepted, accepted)

    @asynccontextmanager
    async def batch_slot(self) -> AsyncIterator[None]:
        """Hold one of the venue's BATCH concurrent backfill slots (first come, first served)."""
        if self._in_batch < self._batch and not self._batch_waiters:
            self._in_batch += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._batch_waiters.append(waiter)
            try:
                await waiter  # a releasing holder hands its slot over
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release_batch()  # handed over, but we are leaving: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self._batch_waiters.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release_batch()

    def _release_batch(self) -> None:
        self._in_batch -= 1
        self._wake_batch_waiters()

    def _wake_batch_waiters(self) -> None:
        while self._batch_waiters and self._in_batch < self._batch:
            waiter = self._batch_waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                self._in_batch += 1
                waiter.set_result(None)

    @property
    def in_batch(self) -> int:
        """Backfill requests under way now, at most BATCH."""
        return self._in_batch


class MessagePacer:
    """Paces a connection's outgoing method messages under a venue's cap per second.

    Venues such as Binance count every frame the client sends against the cap,
    pings and pongs included, and drop the connection past it. The pacer lets
    through at most `cap - reserve` messages in any one-second window (closed
    at both ends, so that a window counted from either edge still fits), which
    leaves `reserve` frames a second for the WebSocket library's control frames.
    Pure: callers pass the monotonic time.
    """

    def __init__(self, cap_per_s: float, reserve: int = 2) -> None:
        self.per_window = max(1, int(cap_per_s) - reserve)
        self._sent: collections.deque[float] = collections.deque()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next message may go at `now`."""
        while self._sent and now - self._sent[0] > 1.0:
            self._sent.popleft()
        if len(self._sent) < self.per_window:
            return 0.0
        # Strictly more than one second after the oldest: nudge past the edge.
        return self._sent[0] + 1.0 - now + 1e-3

    def sent(self, now: float) -> None:
        """Record a message sent at `now`."""
        self._sent.append(now)
