"""Rendezvous (highest random weight) hashing: which live instance owns a series.

Every instance computes the same owner from the same member list, with no
coordination beyond agreeing on that list; when a member joins or leaves only
the series it gains or loses move (about 1/n of them), never the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b


def weight(member: str, item: str) -> int:
    """The member's pseudo-random weight for `item`, the same on every machine."""
    digest = blake2b(f"{member}\0{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(item: str, members: Sequence[str]) -> str | None:
    """The member with the highest weight for `item` (None without members);
    ties, vanishingly rare, go to the greater member name."""
    if not members:
        return None
    return max(members, key=lambda m: (weight(m, item), m))


def share(items: Iterable[str], members: Sequence[str], member: str) -> set[str]:
    """The items `member` owns among `members`."""
    return {item for item in items if owner(item, members) == member}
