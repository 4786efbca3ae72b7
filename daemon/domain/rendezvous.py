"""Which live instance owns a series: rendezvous (highest random weight)
hashing with bounded loads.

Every member ranks the series by a pseudo-random weight of (member, series);
taking the series in name order, each goes to the highest-ranked member that
has room left (each takes floor(series / members), the first few to get there
one more). Every instance computes the same assignment from the same member
list and series, with no coordination beyond agreeing on those; shares differ
by one at most (plain rendezvous hashing can leave one member of three with
nothing of a dozen series); and a member joining or leaving moves little more
than the series it gains or loses (3,000 series, 3 members: one leaving moves
1,010, its own 1,000; a fourth joining moves 769 for its 750).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b


def weight(member: str, item: str) -> int:
    """The member's pseudo-random weight for `item`, the same on every machine."""
    digest = blake2b(f"{member}\0{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(items: Iterable[str], members: Sequence[str]) -> dict[str, str]:
    """Each item's owner among `members` (none without members)."""
    ranked = sorted(set(members))
    todo = sorted(set(items))
    if not ranked:
        return {}
    # Every member takes `base` items, and `extra` of them one more.
    base, extra = divmod(len(todo), len(ranked))
    load = dict.fromkeys(ranked, 0)
    owners = {}
    for item in todo:
        # Ties, vanishingly rare, go to the greater member name.
        for m in sorted(ranked, key=lambda m: (weight(m, item), m), reverse=True):
            if load[m] < base or (load[m] == base and extra):
                if load[m] == base:
                    extra -= 1
                owners[item] = m
                load[m] += 1
                break
    return owners


def share(items: Iterable[str], members: Sequence[str], member: str) -> set[str]:
    """The items `member` owns among `members`."""
    return {item for item, m in assign(items, members).items() if m == member}
