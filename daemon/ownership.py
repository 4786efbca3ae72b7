"""Which series this instance owns: leases in PostgreSQL, kept by `LeaseKeeper`.

Every instance renews its membership and its leases every third of the lease
TTL, in one transaction: the live members decide by rendezvous hashing which
series each of them should own, and an instance takes what is its own once
nobody else holds it. What is no longer its own it first stops acting on,
then gives up (a second transaction): so no two instances ever act on a
series at once. Whoever changed something (joined, left, handed series over)
notifies the others, who look again at once instead of at their next renewal.

Safety: a lease is good until `expires_at` by the database's clock, which
is at least the TTL after the renewal *started* by ours. An instance that
cannot renew (database unreachable, process stalled) stops acting on its
series once TTL - margin has passed since its last successful renewal
started, by its own monotonic clock: before anyone else can take them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from candled import logs, metrics
from candled.domain import SeriesKey
from candled.domain.rendezvous import share
from candled.store import leases
from candled.store.database import CONNECT_TIMEOUT_S, UNAVAILABLE

log = logs.get("candled.cluster")

# A renewal is good for TTL by the database's clock; ours stops trusting it a
# fifth of the TTL sooner, for clock drift and the time it takes to stop.
MARGIN = 0.2
RETRY_S = 1.0  # after a failed renewal, try again this soon (bounded by TTL/3)
WATCH_SLACK_S = 0.05  # look at a member's expiry this long after it


@dataclass(frozen=True)
class View:
    """What the last renewal learnt: the series this instance owns, the live
    members, and the venue bans any of them recorded."""

    owned: frozenset[SeriesKey] = frozenset()
    members: tuple[leases.Member, ...] = ()
    bans: dict[str, datetime] = field(default_factory=dict)


class LeaseKeeper:
    """Keeps this instance's membership and series leases, and tells the daemon
    (`on_view`) after every renewal, and when it stops trusting its leases."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        identity: leases.Identity,
        ttl: timedelta,
        series: Callable[[], Collection[SeriesKey]],
        on_view: Callable[[View], Awaitable[None]],
        *,
        dsn: str = "",
    ) -> None:
        self.identity = identity
        self.ttl_s = ttl.total_seconds()
        self.view = View()
        self.valid_until = 0.0  # monotonic; leases are trusted until then
        self._pool = pool
        self._series = series
        self._on_view = on_view
        self._dsn = dsn  # for LISTEN; "" : no notifications, renewals only
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._failing = False
        # When the first other member expires unless it renews (monotonic):
        # looking again just then takes a dead member's series over TTL after
        # its last renewal, not up to a third of the TTL later.
        self._watch_at: float | None = None
        self._plan: tuple[tuple[frozenset[str], tuple[str, ...]], list[str]] | None = None

    @property
    def interval_s(self) -> float:
        """How often leases are renewed."""
        return self.ttl_s / 3

    def poke(self) -> None:
        """Renew now (the configured series changed, say)."""
        self._wake.set()

    def _mine(self, configured: Collection[str], members: list[str]) -> list[str]:
        """This instance's share, recomputed only when the series or the
        members changed (10,000 series over 10 members take ~0.1 s)."""
        basis = (frozenset(configured), tuple(members))
        if self._plan is None or self._plan[0] != basis:
            self._plan = (basis, sorted(share(configured, members, self.identity.instance)))
        return self._plan[1]

    async def renew(self) -> View:
        """One renewal: membership, leases, bans (`on_view` is the caller's to call)."""
        started = time.monotonic()
        me = self.identity.instance
        configured = {str(k): k for k in self._series()}
        before = self.view
        async with self._pool.acquire() as conn, conn.transaction():
            members = await leases.heartbeat(conn, self.identity, self.ttl_s)
            names = [m.instance for m in members]
            mine = self._mine(configured, names)
            held = await leases.claim(conn, me, mine, self.ttl_s)
            bans = await leases.bans(conn)
            if names != [m.instance for m in before.members]:
                await leases.notify(conn, me)
        seen = time.monotonic()  # after the database's now(): a late-side estimate
        others = [m.expires_in_s for m in members if m.instance != me]
        self._watch_at = seen + min(others) + WATCH_SLACK_S if others else None
        self.valid_until = started + self.ttl_s * (1 - MARGIN)
        owned = frozenset(configured[s] for s in held)
        self._count(before.owned, owned, {configured[s] for s in mine})
        if self._failing:
            self._failing = False
            log.info("leases renewed again", owned=len(owned), members=len(members))
        self.view = View(owned, tuple(members), bans)
        return self.view

    def _count(
        self, before: frozenset[SeriesKey], after: frozenset[SeriesKey], mine: set[SeriesKey]
    ) -> None:
        """Count and log what a renewal changed: series gone that were still
        ours to own were lost (taken after our lease expired); the others
        are handed over (`hand_over`)."""
        gained, gone = after - before, before - after
        lost, handing = gone & mine, gone - mine
        metrics.lease_acquisitions.inc(len(gained))
        metrics.lease_losses.inc(len(lost))
        if gained or gone:
            log.info("series ownership changed", instance=self.identity.instance,
                     acquired=sorted(map(str, gained)), lost=sorted(map(str, lost)),
                     handing_over=sorted(map(str, handing)), owned=len(after))  # fmt: skip
        metrics.leases_held.set(len(after))

    async def hand_over(self) -> None:
        """Give up the leases held but no longer ours (after `on_view` stopped
        acting on them), and tell the others to take them."""
        keep = [str(k) for k in self.view.owned]
        async with self._pool.acquire() as conn, conn.transaction():
            released = await leases.release(conn, self.identity.instance, keep)
            if released:
                await leases.notify(conn, self.identity.instance)
        metrics.lease_handovers.inc(len(released))

    async def _fence(self) -> None:
        """Stop acting on every series: the leases may have expired."""
        lost = self.view.owned
        log.error("leases not renewed in time; stopping work on every owned series until"
                  " the database answers", instance=self.identity.instance,
                  series=len(lost))  # fmt: skip
        metrics.lease_losses.inc(len(lost))
        metrics.leases_held.set(0)
        self.view = View(frozenset(), self.view.members, self.view.bans)
        await self._on_view(self.view)

    def _bounded(self, seconds: float) -> float:
        """`seconds`, but no further than the leases' end while we hold some."""
        if self.view.owned:
            seconds = min(seconds, self.valid_until - time.monotonic())
        return max(seconds, 0.05)

    async def _attempt(self, step: Callable[[], Awaitable[object]] | None = None) -> bool:
        """Renew (or `step`), bounded so that a hung database cannot carry us
        past the leases' end; False when it failed."""
        try:
            async with asyncio.timeout(self._bounded(self.interval_s)):
                await (step or self.renew)()
            return True
        except UNAVAILABLE as e:
            if not self._failing:
                self._failing = True
                log.warning("cannot renew leases", instance=self.identity.instance,
                            error=repr(e))  # fmt: skip
            return False

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection; without it, renewals still happen."""
        if not self._dsn or (self._listener is not None and not self._listener.is_closed()):
            return
        # Bounded like a renewal: a hung connect must not delay the fence.
        timeout = self._bounded(min(CONNECT_TIMEOUT_S, self.interval_s))
        try:
            conn = await asyncpg.connect(self._dsn, timeout=timeout)
            await conn.add_listener(leases.CHANNEL, self._notified)
            self._listener = conn
        except UNAVAILABLE as e:
            log.debug("cannot listen for cluster changes", error=repr(e))

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload != self.identity.instance:
            self._wake.set()

    async def run(self) -> None:
        """Renew until cancelled; stop acting on the series when renewals fail
        for too long, and take them again when they succeed."""
        try:
            while True:
                await self._listen()
                ok = await self._attempt()
                if ok:
                    await self._on_view(self.view)
                    ok = await self._attempt(self.hand_over)
                now = time.monotonic()
                if self.view.owned and now >= self.valid_until:
                    await self._fence()
                wait = self.interval_s if ok else min(RETRY_S, self.interval_s)
                if self.view.owned:
                    wait = min(wait, max(self.valid_until - now, 0.0))
                if ok and self._watch_at is not None and self._watch_at > now:
                    wait = min(wait, self._watch_at - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            if self._listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._listener.close(), 2)

    async def leave(self, timeout_s: float = 3.0) -> None:
        """Hand every lease over at once and leave the member list (a stop)."""
        owned = self.view.owned
        try:
            async with asyncio.timeout(timeout_s), self._pool.acquire() as conn:
                await leases.leave(conn, self.identity.instance)
        except UNAVAILABLE as e:
            log.warning("could not hand the leases over; they expire instead",
                        instance=self.identity.instance, ttl_s=self.ttl_s,
                        error=repr(e))  # fmt: skip
            return
        metrics.lease_handovers.inc(len(owned))
        metrics.leases_held.set(0)
        self.view = View(frozenset(), (), self.view.bans)
        log.info("leases handed over", instance=self.identity.instance, series=len(owned))
