"""Candle sanity checks (pure): what may reach the store.

A candle that fails is quarantined with its reason, never stored and never
dropped silently. The venue stays the source of truth for *whether* a bar
exists (bars outside the calendar are kept); these checks are about values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from math import isfinite

from candled.domain import Candle
from candled.domain.timeframe import EPOCH, require_utc

# Venue and host clocks differ a little; a bar may close this far "ahead".
CLOCK_SKEW = timedelta(seconds=5)
_ONE_US = timedelta(microseconds=1)


def problem(candle: Candle, now: datetime, skew: timedelta = CLOCK_SKEW) -> str | None:
    """Why `candle` must not be stored, or None when it is sane."""
    o, h, low, c, v = candle.open, candle.high, candle.low, candle.close, candle.volume
    # Spelled out (not a loop over a tuple): this runs on every candle stored.
    if not (isfinite(o) and o > 0 and isfinite(h) and h > 0):
        return "price not finite and positive"
    if not (isfinite(low) and low > 0 and isfinite(c) and c > 0):
        return "price not finite and positive"
    if not (isfinite(v) and v >= 0):
        return "volume not finite and non-negative"
    if h < max(o, c):
        return "high below open or close"
    if low > min(o, c):
        return "low above open or close"
    tf, ts, opens = candle.series.tf, candle.ts, None
    step_us, length = tf.step_us, tf.length
    if step_us and length is not None and type(ts) is datetime and ts.tzinfo is UTC:
        # What every source hands in (a UTC datetime, a fixed-length bar): the
        # checks below in integer microseconds, without the calls.
        if ((ts - EPOCH) // _ONE_US - tf.origin_us) % step_us:
            return f"ts not aligned to {candle.series.timeframe}"
        try:
            close = ts + length
        except OverflowError:
            return "bar closes in the future"  # after year 9999, past any clock
        if close - require_utc(now) > skew:
            return "bar closes in the future"
        return None
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
