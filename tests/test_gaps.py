"""Gap planning: missing ranges, repair windows, the empty-answer policy (pure)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candled.domain import Timeframe
from candled.domain.ranges import Range, count_bars, merge_ranges, subtract_ranges
from candled.gaps import EmptyRangePolicy, RepairState, Window, missing_ranges, plan_windows

M1 = Timeframe.parse("1m")
BASE = datetime(2024, 12, 30, tzinfo=UTC)  # a Monday: aligned for every timeframe but 1M
MONTH_BASE = datetime(2023, 11, 1, tzinfo=UTC)


def bar(i: int, tf: Timeframe = M1) -> datetime:
    return tf.add(MONTH_BASE if tf.is_monthly else BASE, i)


def runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive integers, as (first, last) inclusive."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def bars_of(ranges: Iterable[Range], tf: Timeframe) -> set[datetime]:
    return {b for start, end in ranges for b in tf.bars(start, end)}


@dataclass
class Scenario:
    tf: Timeframe
    expected: list[Range]
    islands: list[Range]
    genesis: datetime | None
    confirmed_empty: list[Range]
    oracle: set[datetime]  # the missing bars, by enumeration


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    tf = draw(st.sampled_from([Timeframe.parse(s) for s in ("1m", "1h", "1d", "1w", "1M")]))
    n = draw(st.integers(1, 40 if tf.is_monthly else 150))
    indices = st.sets(st.integers(0, n - 1))
    expected_idx, present_idx = draw(indices), draw(indices)
    # Offsets inside a bar test that unaligned bounds select bars by their open time.
    offset = st.sampled_from([timedelta(0), timedelta(seconds=1), timedelta(seconds=30)])
    genesis = None
    if draw(st.booleans()):
        genesis = bar(draw(st.integers(0, n)), tf) + draw(offset)
    confirmed: list[Range] = []
    for _ in range(draw(st.integers(0, 3))):
        i, j = sorted((draw(st.integers(0, n)), draw(st.integers(0, n))))
        confirmed.append((bar(i, tf) + draw(offset), bar(j, tf) + draw(offset)))
    grid = [bar(i, tf) for i in range(n)]
    oracle = {
        b
        for i, b in enumerate(grid)
        if i in expected_idx
        and i not in present_idx
        and (genesis is None or b >= genesis)
        and not any(s <= b < e for s, e in confirmed)
    }
    return Scenario(
        tf=tf,
        expected=[(bar(a, tf), bar(z + 1, tf)) for a, z in runs(expected_idx)],
        islands=[(bar(a, tf), bar(z, tf)) for a, z in runs(present_idx)],
        genesis=genesis,
        confirmed_empty=confirmed,
        oracle=oracle,
    )


def missing_of(s: Scenario) -> list[Range]:
    return missing_ranges(
        s.expected, s.islands, s.tf, genesis=s.genesis, confirmed_empty=s.confirmed_empty
    )


# --- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_missing_ranges_are_expected_minus_present(s: Scenario) -> None:
    missing = missing_of(s)
    assert bars_of(missing, s.tf) == s.oracle
    assert count_bars(missing, s.tf) == len(s.oracle)
    # Merged, sorted, aligned, never empty: one range per hole.
    assert missing == merge_ranges(missing)
    assert all(s.tf.is_aligned(a) and s.tf.is_aligned(z) and a < z for a, z in missing)
    assert all(z < a2 for (_, z), (a2, _) in itertools.pairwise(missing))


@settings(max_examples=300, deadline=None)
@given(s=scenarios(), page_size=st.integers(1, 30))
def test_windows_cover_exactly_the_missing_bars_newest_first(s: Scenario, page_size: int) -> None:
    windows = plan_windows(missing_of(s), s.tf, page_size, max_fills=10_000)
    covered = [bars_of([(w.start, w.end)], s.tf) for w in windows]
    assert set().union(*covered) & s.oracle == s.oracle
    for w, bars in zip(windows, covered, strict=True):
        assert s.tf.count_bars(w.start, w.end) <= page_size
        assert w.missing_bars == len(bars & s.oracle) > 0
        # Tight: a window starts and ends on missing bars.
        assert w.start in s.oracle and s.tf.add(w.end, -1) in s.oracle
    # Newest first, disjoint.
    assert all(newer.start >= older.end for newer, older in itertools.pairwise(windows))


@settings(max_examples=200, deadline=None)
@given(s=scenarios(), page_size=st.integers(1, 30), max_fills=st.integers(0, 5))
def test_max_fills_keeps_the_newest_windows(s: Scenario, page_size: int, max_fills: int) -> None:
    missing = missing_of(s)
    everything = plan_windows(missing, s.tf, page_size, max_fills=10_000)
    assert plan_windows(missing, s.tf, page_size, max_fills) == everything[:max_fills]


@settings(max_examples=200, deadline=None)
@given(s=scenarios(), page_size=st.integers(1, 30), data=st.data())
def test_skipped_ranges_are_not_requested_but_older_gaps_are(
    s: Scenario, page_size: int, data: st.DataObject
) -> None:
    missing = missing_of(s)
    skip = data.draw(st.lists(st.sampled_from(missing), max_size=2)) if missing else []
    windows = plan_windows(missing, s.tf, page_size, max_fills=10_000, skip=skip)
    assert sum(w.missing_bars for w in windows) == len(s.oracle - bars_of(skip, s.tf))


# --- examples ----------------------------------------------------------------------


def r(i: int, j: int) -> Range:
    return bar(i), bar(j)


def test_one_window_fills_several_younger_holes() -> None:
    windows = plan_windows([r(10, 12), r(20, 25), r(40, 41)], M1, page_size=20, max_fills=10)
    assert windows == [Window(bar(21), bar(41), 5), Window(bar(10), bar(21), 3)]


def test_a_long_hole_is_cut_into_pages_newest_first() -> None:
    windows = plan_windows([r(0, 50)], M1, page_size=20, max_fills=2)
    assert windows == [Window(bar(30), bar(50), 20), Window(bar(10), bar(30), 20)]


def test_plan_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="page_size"):
        plan_windows([r(0, 1)], M1, page_size=0, max_fills=1)
    with pytest.raises(ValueError, match="max_fills"):
        plan_windows([r(0, 1)], M1, page_size=1, max_fills=-1)


def test_islands_are_inclusive_and_genesis_cuts_history() -> None:
    missing = missing_ranges([r(0, 100)], [(bar(10), bar(19)), (bar(50), bar(50))], M1)
    assert missing == [r(0, 10), r(20, 50), r(51, 100)]
    assert missing_ranges([r(0, 100)], [], M1, genesis=bar(60) + timedelta(seconds=1)) == [
        r(61, 100)
    ]
    assert missing_ranges([r(0, 100)], [], M1, confirmed_empty=[r(5, 95)]) == [r(0, 5), r(95, 100)]


def test_monthly_bars_work_without_a_fixed_length() -> None:
    month = Timeframe.parse("1M")
    expected = [(datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))]
    islands = [(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 10, 1, tzinfo=UTC))]
    missing = missing_ranges(expected, islands, month)
    assert count_bars(missing, month) == 4
    windows = plan_windows(missing, month, page_size=3, max_fills=5)
    assert [(w.start.month, w.end.month, w.missing_bars) for w in windows] == [
        (11, 1, 2),
        (1, 3, 2),
    ]


def test_merge_ranges_joins_touching_ranges_and_drops_empty_ones() -> None:
    assert merge_ranges([r(5, 7), r(0, 5), r(9, 9), r(1, 2)]) == [r(0, 7)]


def test_subtract_ranges() -> None:
    assert subtract_ranges([r(0, 10), r(20, 30)], [r(5, 25)]) == [r(0, 5), r(25, 30)]
    assert subtract_ranges([r(0, 10)], []) == [r(0, 10)]
    assert subtract_ranges([r(0, 10)], [r(0, 10)]) == []


# --- the empty-answer policy ----------------------------------------------------------


def test_empty_answers_back_off_then_confirm() -> None:
    policy = EmptyRangePolicy(interval=timedelta(minutes=15))
    now = datetime(2025, 1, 1, tzinfo=UTC)
    state = RepairState()
    assert policy.is_due(state, now)

    state = policy.record(state, candles=0, now=now)
    assert state == RepairState(1, now + timedelta(minutes=15))
    assert not policy.is_due(state, now + timedelta(minutes=14))
    assert policy.is_due(state, now + timedelta(minutes=15))

    later = now + timedelta(minutes=15)
    state = policy.record(state, candles=0, now=later)
    assert state == RepairState(2, later + timedelta(minutes=30))

    state = policy.record(state, candles=0, now=later + timedelta(minutes=30))
    assert state.confirmed_empty
    assert not policy.is_due(state, later + timedelta(days=365))


def test_data_resets_and_sparse_venues_confirm_at_once() -> None:
    policy = EmptyRangePolicy(interval=timedelta(minutes=15))
    now = datetime(2025, 1, 1, tzinfo=UTC)
    state = policy.record(RepairState(), candles=0, now=now)
    assert policy.record(state, candles=7, now=now) == RepairState()

    sparse = EmptyRangePolicy(interval=timedelta(minutes=15), confirm_after=1)
    assert sparse.record(RepairState(), candles=0, now=now).confirmed_empty


def test_policy_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="confirm_after"):
        EmptyRangePolicy(interval=timedelta(minutes=1), confirm_after=0)
    with pytest.raises(ValueError, match="interval"):
        EmptyRangePolicy(interval=timedelta(0))
