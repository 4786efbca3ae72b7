"""Trading days: the unit both calendar sources produce and overrides correct."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from candled.domain.ranges import Range


@dataclass(frozen=True, slots=True)
class TradingDay:
    """One session, labelled by its trading date; times are UTC."""

    day: date
    open: datetime
    close: datetime
    break_start: datetime | None = None
    break_end: datetime | None = None

    def intervals(self) -> list[Range]:
        """The open intervals: one, or two around a break."""
        b0, b1 = self.break_start, self.break_end
        # CME_Equity reports break_start == break_end since its 2021 halt was dropped.
        if b0 is None or b1 is None or b0 >= b1:
            parts = [(self.open, self.close)]
        else:
            parts = [(self.open, b0), (b1, self.close)]
        # An early close may cut into or past the break.
        clipped = [(a, min(b, self.close)) for a, b in parts]
        return [(a, b) for a, b in clipped if a < b]
