"""Candle sanity checks (pure): what may reach the store.

A candle that fails is quarantined with its reason, never stored and never
dropped silently. The venue stays the source of truth for *whether* a bar
exists (bars outside the calendar are kept); these checks are about values.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from candled.domain import Candle
from candled.domain.timeframe import require_utc

# Venue and host clocks differ a little; a bar may close this far "ahead".
CLOCK_SKEW = timedelta(seconds=5)


def problem(candle: Candle, now: datetime, skew: timedelta = CLOCK_SKEW) -> str | None:
    """Why `candle` must not be stored, or None when it is sane."""
    prices = (candle.open, candle.high, candle.low, candle.close)
    if not all(math.isfinite(p) and p > 0 for p in prices):
        return "price not finite and positive"
    if not (math.isfinite(candle.volume) and candle.volume >= 0):
        return "volume not finite and non-negative"
    if candle.high < max(candle.open, candle.close):
        return "high below open or close"
    if candle.low > min(candle.open, candle.close):
        return "low above open or close"
    tf, ts, opens = candle.series.tf, candle.ts, None
    try:
        ts = require_utc(ts)
        opens = tf.floor(ts)  # the bar holding `ts`; `ts` must be its open
    except (OverflowError, ValueError):
        # The grid's bar holding `ts` opens before year 1: `ts` opens no bar of it.
        pass
    if opens is None or opens != ts:
        return f"ts not aligned to {candle.series.timeframe}"
    try:
        close = tf.add(opens, 1)  # close_time(ts), the floor done once
    except (OverflowError, ValueError):
        return "bar closes in the future"  # after year 9999, past any clock
    # A difference, not `now + skew`: a clock at the end of the range must not overflow.
    if close - require_utc(now) > skew:
        return "bar closes in the future"
    return None
