"""Half-open UTC time ranges `(start, end)` and their arithmetic, pure.

The calendars, the gap planner, the store and the returns all speak in these;
a range costs O(1) whatever its length, so nothing here enumerates bars.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from candled.domain.timeframe import Timeframe

Range = tuple[datetime, datetime]


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sort, drop empty ranges and merge overlapping or touching ones."""
    merged: list[Range] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract_ranges(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """`ranges` minus `holes`, both as sets of instants; a sweep over merged inputs."""
    result: list[Range] = []
    cut = merge_ranges(holes)
    i = 0
    for start, end in merge_ranges(ranges):
        # Holes that end before this range can never matter again.
        while i < len(cut) and cut[i][1] <= start:
            i += 1
        j = i
        while start < end and j < len(cut) and cut[j][0] < end:
            if cut[j][0] > start:
                result.append((start, cut[j][0]))
            start = max(start, cut[j][1])
            j += 1
        if start < end:
            result.append((start, end))
    return result


def count_bars(ranges: Iterable[Range], tf: Timeframe) -> int:
    """Number of bar open times in the ranges: O(number of ranges) for fixed-length tfs."""
    return sum(tf.count_bars(start, end) for start, end in ranges)
