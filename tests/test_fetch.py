"""The HTTP fetcher against the simulated exchange over real sockets: retries,
Retry-After, bans and the venue's budget, as the sim's counters see them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from candled import clock as wallclock
from candled import metrics
from candled.domain import SeriesKey
from candled.fetch import Fetcher, FetchError
from candled.throttle import VenueThrottle
from candled.venues import CodecError, HttpRequest, RateFacts, VenueError, get_codec
from candled_sim import SimExchange, parse_scenario
from candled_sim.http import IN_FLIGHT_GRACE_S

pytestmark = pytest.mark.timeout(30)
CODEC = get_codec("binance")
BTC_1M = SeriesKey("binance", "BTCUSDT", "1m")
BTC_1S = SeriesKey("binance", "BTCUSDT", "1s")


class SimClock:
    """Wall-clock time shifted so that the venue minute is at `second` now:
    tests that need a minute boundary get one within seconds. The sim and the
    throttle share it, as a venue and a client share real time."""

    def __init__(self, second: float = 0.0) -> None:
        self.offset_s = (second - wallclock.epoch() % 60) if second else 0.0

    def epoch(self) -> float:
        return wallclock.epoch() + self.offset_s

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.epoch(), UTC)


StartSim = Callable[..., Awaitable[tuple[SimExchange, str]]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    sims: list[SimExchange] = []

    async def start(clock: SimClock, **scenario: Any) -> tuple[SimExchange, str]:
        data = {"seed": 3, "symbols": [{"symbol": "BTCUSDT", "listed": "-3h"}], **scenario}
        sim = SimExchange(parse_scenario(data, clock.utc()), clock=clock.utc)
        sims.append(sim)
        host, port = await sim.start("127.0.0.1", 0)
        return sim, f"http://{host}:{port}"

    yield start
    for sim in sims:
        await sim.stop()


class RecordingThrottle(VenueThrottle):
    """Notes when each request was let through and what each answer said."""

    def __init__(self, clock: SimClock, capacity: int = 6000, **kw: Any) -> None:
        super().__init__(capacity, 60.0, 5, clock=clock.epoch, **kw)
        self.sent: list[float] = []
        self.answers: list[tuple[float, RateFacts]] = []
        self._now = clock.epoch

    async def acquire(self, weight: int) -> float:
        sent_at = await super().acquire(weight)
        self.sent.append(sent_at)
        return sent_at

    def observe(self, facts: RateFacts, sent_at: float | None = None) -> None:
        self.answers.append((self._now(), facts))
        super().observe(facts, sent_at)


def klines(series: SeriesKey = BTC_1M, limit: int = 5) -> HttpRequest:
    end = series.tf.floor(wallclock.now())
    return CODEC.history_request(series, series.tf.add(end, -limit), end, limit)


def fetcher(url: str, throttle: VenueThrottle, **kw: Any) -> Fetcher:
    return Fetcher(url, CODEC, throttle, retry_base_s=0.05, **kw)


async def test_a_full_page_arrives_whole(start_sim: StartSim) -> None:
    clock = SimClock()
    sim, url = await start_sim(clock)
    req = klines(BTC_1S, limit=1000)  # ~150 kB: more than one read's worth
    async with fetcher(url, VenueThrottle(6000, 60, 5)) as f:
        resp = await f.fetch(req)
    candles = CODEC.parse_history(BTC_1S, resp.status, resp.body, wallclock.now())
    start = datetime.fromtimestamp(int(req.params["startTime"]) / 1000, UTC)
    assert len(candles) == 1000
    end = start + timedelta(seconds=1000)
    assert candles == sim.truth.candles(BTC_1S, start, end, wallclock.now())


async def test_5xx_burst_is_retried_until_it_succeeds(start_sim: StartSim) -> None:
    clock = SimClock()
    sim, url = await start_sim(
        clock, faults={"http_errors": {"every": 4, "burst": 3, "status": 502}}
    )
    statuses: list[int] = []
    async with fetcher(url, VenueThrottle(6000, 60, 5), on_response=statuses.append) as f:
        answers = [await f.fetch(klines()) for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert statuses == [200, 200, 200, 502, 502, 502, 200]  # the fourth fetch, retried
    assert sim.counters.http_errors_injected == 3
    assert CODEC.parse_history(BTC_1M, 200, answers[3].body, wallclock.now())


async def test_connection_resets_and_timeouts_are_retried(start_sim: StartSim) -> None:
    clock = SimClock()
    sim, url = await start_sim(
        clock,
        faults={
            "connection_resets": {"every": 2},
            "slow_responses": {"every": 2, "delay": "3s"},
        },
    )
    began = time.monotonic()
    async with fetcher(url, VenueThrottle(6000, 60, 5), timeout_s=0.5) as f:
        answers = [await f.fetch(klines()) for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert sim.counters.connection_resets >= 1 and sim.counters.slow_responses >= 1
    assert time.monotonic() - began < 3  # gave up on the slow answer, did not wait for it


def malformed_http() -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "candled_malformed_messages_total", {"venue": "binance", "source": "http"}
        )
        or 0.0
    )


@pytest.mark.parametrize(
    ("faults", "statuses", "malformed", "broken_json"),
    [
        # A CDN's HTML error pages, 5xx and 403 alike: counted, asked again.
        ({"html_errors": {"every": 2, "statuses": [403, 502]}}, [200, 403, 200, 502, 200, 403, 200],
         3, None),
        # A 200 larger than the bound (a valid `[]`, padded): never taken for an empty page.
        ({"oversized_bodies": {"every": 2, "size": 100_000}}, [200] * 7, 3, None),
        # The second truncation cuts the connection mid-body: asked again. The
        # first, a complete answer of broken JSON (the second fetch's), is the
        # codec's to reject.
        ({"truncated_bodies": {"every": 2}}, [200] * 5, 1, 1),
        # An answer that never comes: the timeout fires and the request goes again.
        ({"never_answers": {"every": 2}}, [200] * 4, 0, None),
    ],
    ids=["html", "oversized", "cut", "never-answers"],
)  # fmt: skip
async def test_broken_answers_are_counted_and_asked_again(
    start_sim: StartSim,
    faults: dict[str, Any],
    statuses: list[int],
    malformed: int,
    broken_json: int | None,
) -> None:
    sim, url = await start_sim(SimClock(), faults=faults)
    seen: list[int] = []
    before = malformed_http()
    async with fetcher(
        url, VenueThrottle(6000, 60, 5), timeout_s=0.5, max_body=50_000, on_response=seen.append
    ) as f:
        answers = [await f.fetch(klines()) for _ in range(4)]
    assert seen == statuses
    assert malformed_http() - before == malformed
    for i, answer in enumerate(answers):
        assert answer.status == 200
        if i == broken_json:
            with pytest.raises(CodecError):
                CODEC.parse_history(BTC_1M, 200, answer.body, wallclock.now())
        else:
            assert len(CODEC.parse_history(BTC_1M, 200, answer.body, wallclock.now())) == 5
    c = sim.counters
    fired = c.html_errors + c.oversized_bodies + c.truncated_bodies + c.never_answered
    assert fired == (2 if broken_json else 3)


async def test_retries_give_up_after_max_time(start_sim: StartSim) -> None:
    sim, url = await start_sim(SimClock(), faults={"http_errors": {"every": 1}})
    async with fetcher(url, VenueThrottle(6000, 60, 5), max_time_s=0.5) as f:
        with pytest.raises(FetchError, match="503"):
            await f.fetch(klines())
    assert sim.counters.http_errors_injected >= 2


async def test_unknown_symbol_is_answered_without_retry(start_sim: StartSim) -> None:
    sim, url = await start_sim(SimClock())
    bad = SeriesKey("binance", "NOPEUSDT", "1m")
    async with fetcher(url, VenueThrottle(6000, 60, 5)) as f:
        resp = await f.fetch(klines(bad))
    assert resp.status == 400
    with pytest.raises(VenueError, match="Invalid symbol"):
        CODEC.parse_history(bad, resp.status, resp.body, wallclock.now())
    assert sim.counters.requests_by_status == {400: 1}


async def test_429_retry_waits_for_retry_after_and_the_budget_holds_after(
    start_sim: StartSim,
) -> None:
    clock = SimClock(second=57.0)  # the venue minute ends in 3 s
    sim, url = await start_sim(clock, rest={"weight_per_minute": 6})  # 3 requests a minute
    throttle = RecordingThrottle(clock, capacity=600)  # we believe in 600
    statuses: list[int] = []
    async with fetcher(url, throttle, on_response=statuses.append) as f:
        for _ in range(6):
            assert (await f.fetch(klines())).status == 200

    assert statuses == [200, 200, 200, 429, 200, 200, 200]
    answered_429, facts = throttle.answers[3]
    assert facts.rate_limited and facts.retry_after_s
    assert throttle.sent[4] >= answered_429 + facts.retry_after_s  # the retry waited
    # Three requests into the new minute, the throttle holds the next one back
    # until the minute after: the venue's budget, learned from the 429.
    assert throttle.window_budget == 6
    assert throttle.delay(2) > 50
    c = sim.counters
    assert (c.sent_429, c.sent_418, c.requests_during_ban) == (1, 0, 0)


async def test_418_ban_is_reported_and_nothing_is_sent_until_it_ends(
    start_sim: StartSim,
) -> None:
    clock = SimClock(second=55.0)
    sim, url = await start_sim(clock, rest={"weight_per_minute": 4, "ban": "2s"})
    # Another client on our IP spends the budget and is told to wait (429):
    # the venue bans the next request, which is ours.
    async with aiohttp.ClientSession() as other:
        req = klines()
        for expected in (200, 200, 429):
            async with other.get(url + req.path, params=dict(req.params)) as r:
                assert r.status == expected
    # Past the sim's in-flight grace: our request could have known of the 429.
    await asyncio.sleep(IN_FLIGHT_GRACE_S + 0.2)

    throttle = RecordingThrottle(clock)
    bans: list[float] = []

    async def on_ban(until: float) -> None:
        bans.append(until)

    statuses: list[int] = []
    async with fetcher(url, throttle, on_ban=on_ban, on_response=statuses.append) as f:
        assert (await f.fetch(klines())).status == 200

    banned_at, facts = throttle.answers[0]
    assert facts.banned and facts.retry_after_s == 2
    assert bans == [pytest.approx(banned_at + 2, abs=0.05)]
    assert throttle.sent[1] >= bans[0]  # the retry waited for the ban to end
    assert statuses[0] == 418 and statuses[-1] == 200
    c = sim.counters
    assert c.sent_418 == 1 and c.requests_during_ban == 0


async def test_a_ban_persisted_before_a_restart_holds_every_request(start_sim: StartSim) -> None:
    clock = SimClock()
    sim, url = await start_sim(clock)
    until = clock.epoch() + 1.5
    throttle = RecordingThrottle(clock, banned_until=until)
    async with fetcher(url, throttle) as f:
        assert (await f.fetch(klines())).status == 200
    assert throttle.sent == [pytest.approx(until + 0.25, abs=0.1)]
    assert sim.counters.requests_by_status == {200: 1} and sim.counters.requests_during_ban == 0
