"""Gap planning, pure: expected grid + present islands -> missing ranges -> request windows.

Everything here works on half-open, bar-aligned UTC ranges `(start, end)`: the
bars of a range are the open times `t` with `start <= t < end`. A range costs
O(1) whatever its length, so a 30-day `1m` audit never enumerates bars; only
`Timeframe.floor/ceil/add/count_bars` are used, so calendar-month bars work too.

The repair outcome policy (`EmptyRangePolicy`) is a pure state machine: the
store persists `RepairState`, the healer asks the policy what to do next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from candled.domain import Timeframe
from candled.domain.ranges import Range, subtract_ranges

# Bars that closed this recently may still be on their way to the store: not judged.
SETTLE = timedelta(seconds=30)


def settle_time(settling: Mapping[str, timedelta], venue: str) -> timedelta:
    """How long after a bar's close `venue`'s bars are judged: its settling
    time (`settling`, per venue), and never less than SETTLE."""
    return max(SETTLE, settling.get(venue, SETTLE))


def _bar_span(start: datetime, end: datetime, tf: Timeframe) -> Range:
    """The bars whose open lies in [start, end), as an aligned range."""
    return tf.ceil(start), tf.ceil(end)


def missing_ranges(
    expected: Iterable[Range],
    islands: Iterable[Range],
    tf: Timeframe,
    *,
    genesis: datetime | None = None,
    confirmed_empty: Iterable[Range] = (),
) -> list[Range]:
    """Expected bars that are not present, not before genesis, not confirmed empty.

    `expected` and `confirmed_empty` are half-open; `islands` are runs of present
    bars as SQL computes them, `(first_open, last_open)` with both ends inclusive.
    The result is merged, sorted oldest first and bar-aligned.
    """
    present = [(tf.ceil(first), tf.next(last)) for first, last in islands]
    excluded = present + [_bar_span(s, e, tf) for s, e in confirmed_empty]
    wanted = [_bar_span(s, e, tf) for s, e in expected]
    if genesis is not None:
        first_bar = tf.ceil(genesis)
        wanted = [(max(s, first_bar), e) for s, e in wanted]
    return subtract_ranges(wanted, excluded)


@dataclass(frozen=True, slots=True)
class Window:
    """One repair request: bars with open in [start, end), `missing_bars` of them absent."""

    start: datetime
    end: datetime
    missing_bars: int


def plan_windows(
    missing: Sequence[Range],
    tf: Timeframe,
    page_size: int,
    max_fills: int,
    *,
    skip: Iterable[Range] = (),
) -> list[Window]:
    """Request windows, newest first, each spanning at most `page_size` bars.

    A window ends after its newest missing bar and reaches back as far as one
    venue page allows, so one request fills every older hole within that page.
    A hole longer than a page is cut into page-sized windows. `skip` removes
    ranges that are waiting for their next retry (see `EmptyRangePolicy`).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if max_fills < 0:
        raise ValueError(f"max_fills must be >= 0, got {max_fills}")
    pending = subtract_ranges(missing, skip)  # oldest first: pop() yields the newest
    windows: list[Window] = []
    while pending and len(windows) < max_fills:
        windows.append(_take_window(pending, tf, page_size))
    return windows


def _take_window(pending: list[Range], tf: Timeframe, page_size: int) -> Window:
    """Pop the newest page's worth of missing bars off `pending` into one window."""
    end = pending[-1][1]
    limit = tf.add(end, -page_size)  # oldest open time one page can reach
    start, covered = end, 0
    while pending and pending[-1][1] > limit:
        a, b = pending.pop()
        if a < limit:
            pending.append((a, limit))  # the older part waits for the next window
            a = limit
        start, covered = a, covered + tf.count_bars(a, b)
    return Window(start, end, covered)


@dataclass(frozen=True, slots=True)
class RepairState:
    """What the store remembers about one repair window's outcomes."""

    empty_answers: int = 0
    next_attempt_at: datetime | None = None  # None: due now
    confirmed_empty: bool = False


@dataclass(frozen=True, slots=True)
class EmptyRangePolicy:
    """Retry empty answers with growing intervals; confirm emptiness after K of them.

    After the n-th empty answer the next attempt waits `interval * 2**(n-1)`;
    the `confirm_after`-th empty answer marks the range confirmed-empty. Any
    answer with data resets the state. Only complete, successful answers count:
    timeouts, errors and rate-limit responses must not be fed in. For venues
    that publish no bar for a period without trades, use `confirm_after=1`.
    """

    interval: timedelta
    confirm_after: int = 3

    def __post_init__(self) -> None:
        if self.confirm_after < 1:
            raise ValueError(f"confirm_after must be >= 1, got {self.confirm_after}")
        if self.interval <= timedelta(0):
            raise ValueError(f"interval must be positive, got {self.interval}")

    def record(self, state: RepairState, candles: int, now: datetime) -> RepairState:
        """The state after an answer that returned `candles` candles at `now`."""
        if candles > 0:
            return RepairState()
        n = state.empty_answers + 1
        if n >= self.confirm_after:
            return RepairState(n, None, confirmed_empty=True)
        return RepairState(n, now + self.interval * 2 ** (n - 1))

    @staticmethod
    def is_due(state: RepairState, now: datetime) -> bool:
        """Whether the window may be requested at `now`."""
        if state.confirmed_empty:
            return False
        return state.next_attempt_at is None or now >= state.next_attempt_at
