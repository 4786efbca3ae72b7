"""Rendezvous hashing with bounded loads: every instance computes the same
owners, shares differ by one at most, and a member joining or leaving moves
little more than the series it gains or loses."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from candled.domain.rendezvous import assign, share

SERIES = [f"binance:SYM{i:04d}USDT:1m" for i in range(3000)]
MEMBERS = ["host-a-1f2e3d", "host-b-9a8b7c", "host-c-445566"]


def test_no_members_no_owner() -> None:
    assert assign(SERIES, []) == {}


def test_the_owners_do_not_depend_on_the_order_of_either_list() -> None:
    assert assign(SERIES, MEMBERS) == assign(list(reversed(SERIES)), list(reversed(MEMBERS)))


def test_shares_cover_every_series_once_and_differ_by_one_at_most() -> None:
    shares = [share(SERIES, MEMBERS, m) for m in MEMBERS]
    assert set().union(*shares) == set(SERIES)
    assert sum(len(s) for s in shares) == len(SERIES)  # disjoint
    assert [len(s) for s in shares] == [1000, 1000, 1000]


def test_a_member_leaving_moves_little_more_than_its_own_series() -> None:
    before, after = assign(SERIES, MEMBERS), assign(SERIES, MEMBERS[:2])
    moved = {s for s in SERIES if before[s] != after[s]}
    own = {s for s in SERIES if before[s] == MEMBERS[2]}
    assert own <= moved and len(moved) <= len(own) * 1.05
    assert Counter(after.values()) == {MEMBERS[0]: 1500, MEMBERS[1]: 1500}


def test_a_member_joining_takes_its_share_and_moves_little_else() -> None:
    joined = [*MEMBERS, "host-d-000001"]
    before, after = assign(SERIES, MEMBERS), assign(SERIES, joined)
    moved = {s for s in SERIES if before[s] != after[s]}
    taken = {s for s in SERIES if after[s] == "host-d-000001"}
    assert len(taken) == 750 and taken <= moved
    assert len(moved) <= len(taken) * 1.05


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8, unique=True),
       st.lists(st.text(max_size=30), max_size=60))  # fmt: skip
def test_every_item_has_a_member_and_loads_are_even(members: list[str], items: list[str]) -> None:
    owners = assign(items, members)
    assert set(owners) == set(items) and set(owners.values()) <= set(members)
    loads = Counter(owners.values())
    if len(set(items)) >= len(members):  # nobody is left without a share
        assert len(loads) == len(members)
    assert max(loads.values(), default=0) - min(loads.values(), default=0) <= 1
