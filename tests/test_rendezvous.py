"""Rendezvous hashing: every instance computes the same owner, shares are
even, and a member joining or leaving moves only the series it gains or loses."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from candled.domain.rendezvous import owner, share

SERIES = [f"binance:SYM{i:04d}USDT:1m" for i in range(3000)]
MEMBERS = ["host-a-1f2e3d", "host-b-9a8b7c", "host-c-445566"]


def test_no_members_no_owner() -> None:
    assert owner("binance:BTCUSDT:1m", []) is None


def test_the_owner_does_not_depend_on_the_order_of_the_member_list() -> None:
    for s in SERIES[:200]:
        assert owner(s, MEMBERS) == owner(s, list(reversed(MEMBERS)))


def test_shares_are_even_and_cover_every_series_once() -> None:
    shares = [share(SERIES, MEMBERS, m) for m in MEMBERS]
    assert set().union(*shares) == set(SERIES)
    assert sum(len(s) for s in shares) == len(SERIES)  # disjoint
    for s in shares:  # 1,000 each; a binomial's spread is ~26
        assert abs(len(s) - len(SERIES) / 3) < 150, [len(x) for x in shares]


def test_a_member_leaving_moves_only_its_own_series() -> None:
    before = {s: owner(s, MEMBERS) for s in SERIES}
    after = {s: owner(s, MEMBERS[:2]) for s in SERIES}
    moved = {s for s in SERIES if before[s] != after[s]}
    assert moved == {s for s in SERIES if before[s] == MEMBERS[2]}
    # ...and they spread over both survivors, not onto one.
    assert min(Counter(after[s] for s in moved).values()) > len(moved) / 4


def test_a_member_joining_takes_about_its_fair_share_from_everyone() -> None:
    joined = [*MEMBERS, "host-d-000001"]
    moved = {s for s in SERIES if owner(s, MEMBERS) != owner(s, joined)}
    assert all(owner(s, joined) == "host-d-000001" for s in moved)
    assert abs(len(moved) - len(SERIES) / 4) < 150


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8, unique=True),
       st.text(max_size=30))  # fmt: skip
def test_the_owner_is_a_member(members: list[str], item: str) -> None:
    assert owner(item, members) in members
