"""The OHLCV candle, as every source hands it to the writer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from candled.domain.series import SeriesKey
from candled.domain.timeframe import require_utc


@dataclass(frozen=True, slots=True)
class Candle:
    """One closed bar. `ts` is the bar's open time, UTC, aligned to its timeframe."""

    series: SeriesKey
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        # Only the timezone is checked here (cheap, and a naive ts is a bug
        # anywhere); market sanity is the validator's job, which quarantines
        # rather than raising.
        if self.ts.tzinfo is None:
            require_utc(self.ts, "candle ts")
