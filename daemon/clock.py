"""The one wall clock of the daemon, the CLI and the simulator.

Every "now" goes through here, so a test can run the real daemon process (and
the simulator beside it) at a chosen market instant: `CANDLED_CLOCK_OFFSET`
(seconds, may be negative or fractional) is added to the system clock. It is a
test hook; the daemon logs a warning when it is set. Monotonic timers
(timeouts, backoff) are not shifted: they measure durations, not instants.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime, timedelta

OFFSET_ENV = "CANDLED_CLOCK_OFFSET"


def _read_offset() -> float:
    raw = os.environ.get(OFFSET_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"candled: {OFFSET_ENV}: expected seconds, got {raw!r}") from None
    if not math.isfinite(value) or abs(value) > 100 * 365 * 86400:
        raise SystemExit(f"candled: {OFFSET_ENV}: out of range: {raw!r}")
    return value


OFFSET_S = _read_offset()
_OFFSET = timedelta(seconds=OFFSET_S)


def now() -> datetime:
    """The current instant, UTC, tz-aware."""
    return datetime.now(UTC) + _OFFSET


def epoch() -> float:
    """The current instant in epoch seconds (venue windows, bans)."""
    return time.time() + OFFSET_S


def offset_for(instant: datetime) -> float:
    """The offset that makes `now()` read `instant` at this moment (for tests)."""
    return (instant - datetime.now(UTC)).total_seconds()
