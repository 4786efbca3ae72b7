"""Bar timeframes: parsing, alignment and iteration over bar open times.

Every fixed-length timeframe aligns to the Unix epoch, except `1w`, which
starts on Monday 00:00 UTC (the epoch was a Thursday). `1M` is a calendar
month, so it has no fixed length and is handled by month arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# 1970-01-05 is the first Monday after the epoch: weekly bars align to it.
_MONDAY_OFFSET_S = 4 * 86_400
_ONE_US = timedelta(microseconds=1)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
# The venue intervals we accept (Binance's full list); anything else is a typo.
SUPPORTED = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
    "1d", "3d", "1w", "1M",
)  # fmt: skip
_PATTERN = re.compile(r"^(\d+)([smhdwM])$")
# Each supported timeframe parsed once (they are immutable); filled below the class.
_PARSED: dict[str, Timeframe] = {}


def require_utc(ts: datetime, what: str = "timestamp") -> datetime:
    """Return `ts` converted to UTC; reject naive datetimes."""
    if ts.tzinfo is UTC:  # hot, and what astimezone(UTC) returns it as: `ts` itself
        return ts
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {ts.isoformat()}")
    return ts.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A bar length (`1m`, `1w`, `1M`) and the arithmetic of its bar open times."""

    count: int
    unit: str  # one of s m h d w M
    # Derived once (bar arithmetic runs per candle): the bar length and a bar
    # open of the grid (the epoch; Monday 1970-01-05 for `1w`) in microseconds
    # since the epoch (0 and 0 for `1M`), and the length as a timedelta (None
    # for `1M`).
    step_us: int = field(init=False, repr=False, compare=False)
    origin_us: int = field(init=False, repr=False, compare=False)
    length: timedelta | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        monthly = self.unit == "M"
        step_s = 0 if monthly else self.count * _UNIT_SECONDS[self.unit]
        object.__setattr__(self, "step_us", step_s * 1_000_000)
        object.__setattr__(
            self, "origin_us", _MONDAY_OFFSET_S * 1_000_000 if self.unit == "w" else 0
        )
        object.__setattr__(self, "length", None if monthly else timedelta(seconds=step_s))

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        """Read a timeframe as the config writes it; unsupported ones are errors."""
        parsed = _PARSED.get(text)  # hot: every `SeriesKey.tf` parses
        if parsed is not None and cls is Timeframe:
            return parsed
        if text not in SUPPORTED:
            raise ValueError(f"unknown timeframe {text!r}; expected one of {', '.join(SUPPORTED)}")
        m = _PATTERN.match(text)
        assert m is not None  # every SUPPORTED entry matches
        return cls(int(m.group(1)), m.group(2))

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    @property
    def is_monthly(self) -> bool:
        """Whether bars are calendar months, which have no fixed length."""
        return self.unit == "M"

    @property
    def seconds(self) -> int:
        """Fixed length in seconds; monthly bars have none."""
        if self.is_monthly:
            raise ValueError("1M bars have no fixed length")
        return self.count * _UNIT_SECONDS[self.unit]

    @property
    def nominal_seconds(self) -> int:
        """Length in seconds, with a month counted as 30 days (for budgeting, not alignment)."""
        return 30 * 86_400 * self.count if self.is_monthly else self.seconds

    def _origin_s(self) -> int:
        return _MONDAY_OFFSET_S if self.unit == "w" else 0

    def floor(self, ts: datetime) -> datetime:
        """Open time of the bar that contains `ts`."""
        ts = require_utc(ts)
        step_us = self.step_us
        if not step_us:  # monthly
            months = ts.year * 12 + ts.month - 1
            months -= months % self.count
            return datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)
        # Integer microseconds keep this exact for any timestamp.
        us = (ts - EPOCH) // _ONE_US - self.origin_us
        offset = us % step_us
        if not offset and type(ts) is datetime and not ts.fold:
            return ts  # already a bar open (and the very value computed below)
        return EPOCH + timedelta(microseconds=us - offset + self.origin_us)

    def ceil(self, ts: datetime) -> datetime:
        """First bar open time at or after `ts`."""
        f = self.floor(ts)
        return f if f == require_utc(ts) else self.next(f)

    def is_aligned(self, ts: datetime) -> bool:
        """Whether `ts` is a bar open time of this timeframe."""
        return self.floor(ts) == require_utc(ts)

    def add(self, ts: datetime, n: int) -> datetime:
        """Shift an aligned open time by `n` bars (n may be negative)."""
        ts = require_utc(ts)
        step = self.length
        if step is None:  # monthly
            months = ts.year * 12 + ts.month - 1 + n * self.count
            return datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)
        return ts + (step if n == 1 else step * n)

    def next(self, ts: datetime) -> datetime:
        """Open time of the bar after the one containing `ts`."""
        return self.add(self.floor(ts), 1)

    def close_time(self, open_ts: datetime) -> datetime:
        """Exclusive end of the bar that opens at `open_ts`."""
        return self.add(self.floor(open_ts), 1)

    def bars(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Open times of the bars with start <= open < end."""
        ts = self.ceil(start)
        end = require_utc(end)
        while ts < end:
            yield ts
            ts = self.add(ts, 1)

    def count_bars(self, start: datetime, end: datetime) -> int:
        """Number of bars `bars(start, end)` yields, in O(1) for fixed lengths."""
        first = self.ceil(start)
        end = require_utc(end)
        if first >= end:
            return 0
        if self.is_monthly:
            return sum(1 for _ in self.bars(first, end))
        span_us = (end - first) // timedelta(microseconds=1)
        return -(-span_us // (self.seconds * 1_000_000))


_PARSED.update((text, Timeframe.parse(text)) for text in SUPPORTED)
