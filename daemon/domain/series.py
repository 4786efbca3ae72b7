"""Series identity and market profiles."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from candled.domain.timeframe import Timeframe


class DataProfile(enum.StrEnum):
    """How a series' market trades, which decides what counts as a gap."""

    CRYPTO = "CRYPTO"  # 24/7
    EQUITY = "EQUITY"  # exchange sessions, holidays, early closes
    FUTURES = "FUTURES"  # exchange sessions with daily breaks
    FOREX = "FOREX"  # 24/5, Sunday 17:00 to Friday 17:00 New York


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """Which series a candle belongs to: (venue, symbol, timeframe), as stored."""

    venue: str
    symbol: str
    timeframe: str
    # Hashed once: the writer and collectors look keys up per candle.
    _hash: int = field(init=False, repr=False, compare=False)
    # Parsed once: bar arithmetic asks for it several times a candle.
    _tf: Timeframe = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsing rejects bad timeframes at the boundary.
        object.__setattr__(self, "_tf", Timeframe.parse(self.timeframe))
        object.__setattr__(self, "_hash", hash((self.venue, self.symbol, self.timeframe)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def tf(self) -> Timeframe:
        """The timeframe, parsed, for bar arithmetic."""
        return self._tf

    @classmethod
    def parse(cls, text: str) -> SeriesKey:
        """Parse `VENUE:SYMBOL:TF`, the form the CLI's --series takes."""
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"series {text!r}: expected VENUE:SYMBOL:TIMEFRAME")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.venue}:{self.symbol}:{self.timeframe}"
