"""The per-venue throttle, on a fake clock: no test here sleeps for real
beyond a few event-loop turns."""

from __future__ import annotations

import asyncio

import pytest

from candled.throttle import MessagePacer, VenueThrottle
from candled.venues import RateFacts

WINDOW_START = 1_700_000_040.0  # a multiple of 60: a venue minute starts here
SKEW = 0.25  # the throttle's slack after a window end, Retry-After or ban
pytestmark = pytest.mark.timeout(30)


class FakeTime:
    """A clock that only moves when the throttle sleeps (or the test says so)."""

    def __init__(self, t: float) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def throttle(
    time: FakeTime, capacity: int, period_s: float, batch: int = 5, **kw: float
) -> VenueThrottle:
    return VenueThrottle(capacity, period_s, batch, clock=time, sleep=time.sleep, **kw)


def facts(
    used: int | None = None, retry_after: float | None = None, status: int = 200
) -> RateFacts:
    return RateFacts(used, retry_after, rate_limited=status == 429, banned=status == 418)


async def test_bucket_spends_weight_and_refills_at_capacity_per_period() -> None:
    time = FakeTime(WINDOW_START)
    # A huge venue window keeps the window rule out of the way: this is the bucket alone.
    t = throttle(time, capacity=100, period_s=10, window_s=1e9)  # 10 tokens a second
    for _ in range(3):
        await t.acquire(30)
    assert time.slept == [] and t.tokens == pytest.approx(10)

    assert t.delay(30) == pytest.approx(2.0)  # 20 tokens missing at 10/s
    await t.acquire(30)
    assert time.slept == [pytest.approx(2.0)] and t.tokens == pytest.approx(0)

    time.t += 4.5
    assert t.tokens == pytest.approx(45)
    time.t += 1_000
    assert t.tokens == pytest.approx(100)  # never above capacity

    await t.acquire(500)  # heavier than the bucket: costs a full bucket, never waits forever
    assert len(time.slept) == 1 and t.tokens == pytest.approx(0)


async def test_bucket_never_lets_more_than_a_window_budget_through_one_window() -> None:
    time = FakeTime(WINDOW_START + 30)
    t = throttle(time, capacity=10, period_s=60)  # Binance-like: weight per minute
    spent: dict[int, int] = {}
    for _ in range(60):
        sent_at = await t.acquire(1)
        window = int(sent_at // 60)
        spent[window] = spent.get(window, 0) + 1
    # A full bucket plus a window of refill would allow 20 in one window.
    assert max(spent.values()) == 10
    assert len(spent) == 6  # and the throttle does use each window's budget


async def test_venue_count_ahead_of_ours_blocks_until_the_window_ends() -> None:
    time = FakeTime(WINDOW_START + 10)
    t = throttle(time, capacity=6000, period_s=60)
    sent_at = await t.acquire(2)
    t.observe(facts(used=5999), sent_at=sent_at)  # another process used the rest
    assert t.tokens > 5000  # the bucket alone would let us go on
    assert t.delay(2) == pytest.approx(50 + SKEW)
    await t.acquire(2)
    assert time.t == pytest.approx(WINDOW_START + 60 + SKEW)  # the next window

    # A count behind ours does not lower ours; a count from an earlier window is ignored.
    for _ in range(4):
        await t.acquire(1000)
    t.observe(facts(used=10), sent_at=time.t)
    t.observe(facts(used=6000), sent_at=WINDOW_START + 59)
    assert t.delay(1000) == 0  # 4002 + 1000 <= 6000
    await t.acquire(1000)
    assert t.delay(1000) == pytest.approx(120 - 60.25 + SKEW)  # 5002 + 1000 > 6000


async def test_429_empties_the_bucket_until_retry_after() -> None:
    time = FakeTime(WINDOW_START + 10)
    t = throttle(time, capacity=600, period_s=60)
    sent_at = await t.acquire(2)
    t.observe(facts(retry_after=7, status=429), sent_at=sent_at)
    assert t.rate_limited == 1 and t.tokens == pytest.approx(0)
    assert t.delay(2) == pytest.approx(7 + SKEW)
    await t.acquire(2)
    assert time.t == pytest.approx(WINDOW_START + 17 + SKEW)
    assert t.window_budget == 600  # no used-weight header: nothing learned

    # Refused before anything of ours was accepted in the window: someone else
    # spent the budget, which says nothing about its size.
    t.observe(facts(used=900, retry_after=1, status=429), sent_at=time.t)
    assert t.window_budget == 600


async def test_429_teaches_the_venue_budget_so_it_is_not_exceeded_again() -> None:
    time = FakeTime(WINDOW_START + 50)
    t = throttle(time, capacity=600, period_s=60)  # we think 600 a minute ...
    for used in (2, 4, 6):
        sent_at = await t.acquire(2)
        t.observe(facts(used=used), sent_at=sent_at)
    sent_at = await t.acquire(2)
    t.observe(facts(used=8, retry_after=10, status=429), sent_at=sent_at)  # ... it is 6
    assert t.window_budget == 6
    # Three requests of 2 in the next window (the first waits for it), then wait for the one after.
    for _ in range(3):
        await t.acquire(2)
    assert time.t == pytest.approx(WINDOW_START + 60 + SKEW)
    assert t.delay(2) == pytest.approx(60)


async def test_418_ban_blocks_every_request_until_it_ends() -> None:
    time = FakeTime(WINDOW_START)
    t = throttle(time, capacity=6000, period_s=60)
    t.observe(facts(used=12, retry_after=120, status=418), sent_at=time.t)
    assert t.banned and t.bans == 1 and t.banned_until == WINDOW_START + 120
    await t.acquire(2)
    assert time.t >= WINDOW_START + 120 and not t.banned

    t.observe(facts(status=418))  # no Retry-After: the shortest Binance ban
    assert t.banned_until == pytest.approx(time.t + 120)


async def test_a_ban_from_before_a_restart_blocks_a_new_throttle() -> None:
    time = FakeTime(WINDOW_START)
    t = throttle(time, capacity=6000, period_s=60, banned_until=WINDOW_START + 300)
    assert t.banned and t.delay(2) == pytest.approx(300 + SKEW)
    await t.acquire(2)
    assert time.slept and time.t >= WINDOW_START + 300
    assert not throttle(time, 6000, 60, banned_until=WINDOW_START).banned  # an old ban


async def hold_slots(t: VenueThrottle, n: int) -> tuple[list[asyncio.Task[None]], asyncio.Event]:
    """`n` tasks that each take a batch slot and hold it until the event is set;
    the concurrency seen inside is checked against the batch on every entry."""
    release = asyncio.Event()

    async def hold() -> None:
        async with t.batch_slot():
            assert t.in_batch <= t._batch
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(n)]
    for _ in range(5):
        await asyncio.sleep(0)
    return tasks, release


async def test_batch_slot_bounds_concurrency_and_frees_slots_in_order() -> None:
    t = VenueThrottle(6000, 60, batch=3)
    inside = 0
    peak = 0
    order: list[int] = []

    async def request(i: int) -> None:
        nonlocal inside, peak
        async with t.batch_slot():
            order.append(i)
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001 * (i % 3))
            inside -= 1

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        for i in range(20):
            tg.create_task(request(i))
    assert peak == 3 and t.in_batch == 0
    assert order == list(range(20))  # first come, first served


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    t = VenueThrottle(6000, 60, batch=1)
    holders, release = await hold_slots(t, 3)
    assert t.in_batch == 1
    holders[1].cancel()  # a waiter gives up
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*holders, return_exceptions=True)
    assert holders[1].cancelled() and holders[2].done() and not holders[2].cancelled()
    assert t.in_batch == 0


async def test_configure_changes_limits_and_wakes_batch_waiters() -> None:
    time = FakeTime(WINDOW_START)
    t = throttle(time, capacity=100, period_s=10, batch=2)
    tasks, release = await hold_slots(t, 6)
    assert t.in_batch == 2

    t.configure(capacity=100, period_s=10, batch=5)  # raised: waiters get in at once
    await asyncio.sleep(0)
    assert t.in_batch == 5
    t.configure(capacity=100, period_s=10, batch=1)  # lowered: nobody is thrown out ...
    assert t.in_batch == 5
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)  # ... and the last one still gets its turn
    assert t.in_batch == 0

    for _ in range(10):
        await t.acquire(10)
    t.configure(capacity=20, period_s=1, batch=1)  # 20 a second now
    assert t.delay(10) == pytest.approx(0.5)
    assert t.window_budget == 20 * 60

    t.observe(facts(used=20), sent_at=time.t)
    t.observe(facts(used=30, retry_after=1, status=429), sent_at=time.t)
    assert t.window_budget == 20
    t.configure(capacity=20, period_s=1, batch=1)  # the operator's word replaces what was learned
    assert t.window_budget == 20 * 60


def paced_sends(cap: float, n: int, start: float = 10.0) -> list[float]:
    """When `n` messages queued at once at `start` go out under the pacer."""
    pacer, now, sent = MessagePacer(cap), start, []
    for _ in range(n):
        now += pacer.delay(now)
        pacer.sent(now)
        sent.append(now)
    return sent


def most_in_one_second(times: list[float]) -> int:
    """The most sends inside any closed one-second window."""
    return max(sum(1 for u in times if t <= u <= t + 1.0) for t in times)


@pytest.mark.parametrize(("cap", "allowed"), [(5.0, 3), (10.0, 8), (1.0, 1)])
def test_message_pacer_leaves_room_for_control_frames(cap: float, allowed: int) -> None:
    # Binance allows 5 incoming messages a second, pings and pongs included:
    # a burst of subscribes leaves two a second for the WebSocket's own frames.
    sent = paced_sends(cap, 40)
    assert most_in_one_second(sent) == allowed
    assert sent[allowed - 1] == sent[0], "a burst up to the allowance goes at once"
    assert sent[-1] - sent[0] < 40 / allowed + 1, "and the pacer does not crawl"


async def test_a_shared_budget_holds_the_ips_count_against_the_ips_budget() -> None:
    """Three instances share 600 a minute (200 each): the venue's count is the
    whole IP's, so 250 reported (the others' spending) must not stop us, while
    our own spending stops at our 200 and the IP's at 600."""
    time = FakeTime(WINDOW_START + 10)
    t = throttle(time, capacity=200, period_s=60, ip_capacity=600)
    sent_at = await t.acquire(2)
    t.observe(facts(used=250), sent_at=sent_at)
    assert t.delay(2) == 0
    for _ in range(99):
        await t.acquire(2)  # our 200 in all; the bucket refills meanwhile
    assert t.delay(2) == pytest.approx(WINDOW_START + 60 - time.t + SKEW)  # our share is spent
    time.t = WINDOW_START + 70  # next window
    sent_at = await t.acquire(2)
    t.observe(facts(used=599), sent_at=sent_at)  # the others spent the rest
    assert t.delay(2) == pytest.approx(50 + SKEW)
