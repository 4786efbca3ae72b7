"""The simulator's Coinbase Exchange personality, over a real socket: it answers
as Coinbase documents, and the Coinbase codec reads back exactly the truth.

Documentation: https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
and https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from candled.domain import Candle, SeriesKey
from candled.venues import HttpRequest, VenueError, get_codec
from candled_sim import SimExchange, parse_scenario, run_sim
from tests.pg import free_port

CODEC = get_codec("coinbase")
NOW = datetime(2024, 3, 1, 12, 0, 20, tzinfo=UTC)  # 20 s into a minute
BTC_1M = SeriesKey("coinbase", "BTC-USD", "1m")
ETH_1M = SeriesKey("coinbase", "ETH-USD", "1m")
SCENARIO = {
    "seed": 5,
    "symbols": [
        {"symbol": "BTC-USD", "listed": "-30d"},
        {"symbol": "ETH-USD", "listed": "-3h", "illiquid": 0.3},
    ],
}


@dataclass
class Venue:
    sim: SimExchange
    http: aiohttp.ClientSession
    base: str
    clock: list[datetime]  # the sim's clock; tests move it

    @property
    def now(self) -> datetime:
        return self.clock[0]

    async def get(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, Any]:
        async with self.http.get(self.base + path, params=params) as resp:
            body = await resp.read()
            return resp.status, body, await resp.json() if body else None

    async def fetch(self, req: HttpRequest) -> tuple[int, bytes]:
        status, body, _ = await self.get(req.path, req.params)
        return status, body

    async def history(self, key: SeriesKey, start: datetime, end: datetime) -> list[Candle]:
        status, body = await self.fetch(CODEC.history_request(key, start, end, 300))
        return CODEC.parse_history(key, status, body, self.now)

    def truth(self, key: SeriesKey, start: datetime, end: datetime) -> list[Candle]:
        return self.sim.truth.candles(key, start, end, self.now, sparse=True)


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    clock = [NOW]
    sim = SimExchange(parse_scenario(SCENARIO, NOW), clock=lambda: clock[0], protocol="coinbase")
    _, port = await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            yield Venue(sim, http, f"http://127.0.0.1:{port}", clock)
    finally:
        await sim.stop()


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


# --- the codec reads back the truth ------------------------------------------


@pytest.mark.parametrize("key", [BTC_1M, ETH_1M])
async def test_codec_windows_equal_the_sparse_truth(venue: Venue, key: SeriesKey) -> None:
    floor = key.tf.floor(NOW)
    for start, end in [
        (floor - minutes(300), floor),  # a full page
        (floor - minutes(7), floor - minutes(2)),
        (floor - minutes(30) + timedelta(seconds=5), floor - minutes(20) + timedelta(seconds=1)),
        (floor - minutes(10), NOW + minutes(5)),  # reaching past now: only closed bars
    ]:
        got = await venue.history(key, start, end)
        assert got == venue.truth(key, start, end), (key, start, end)
        assert all(start <= c.ts < end for c in got)


async def test_illiquid_minutes_have_no_bucket(venue: Venue) -> None:
    start = BTC_1M.tf.floor(NOW) - timedelta(hours=2)
    got = await venue.history(ETH_1M, start, start + minutes(300))
    dense = venue.sim.truth.candles(ETH_1M, start, start + minutes(300), NOW)
    assert 0 < len(got) < len(dense)
    assert {c.ts for c in got} == {c.ts for c in dense if venue.sim.truth.traded(ETH_1M, c.ts)}
    # A liquid product has every minute.
    liquid = await venue.history(BTC_1M, start, start + minutes(120))
    assert len(liquid) == 120


async def test_wire_rows_are_newest_first_with_the_bucket_in_progress(venue: Venue) -> None:
    floor = BTC_1M.tf.floor(NOW)
    params = {"granularity": "60", "start": _iso(floor - minutes(3)), "end": _iso(floor)}
    status, _, rows = await venue.get("/products/BTC-USD/candles", params)
    assert status == 200
    times = [row[0] for row in rows]
    assert times == [int(floor.timestamp()) - 60 * i for i in range(4)]  # `end` inclusive
    assert all(len(row) == 6 and all(isinstance(x, int | float) for x in row) for row in rows)
    # The first row is the minute still in progress: its values so far.
    partial = venue.sim.truth.partial(BTC_1M, floor, NOW)
    assert rows[0][1:] == [partial.low, partial.high, partial.open, partial.close, partial.volume]
    closed = venue.sim.truth.bar(BTC_1M, floor - minutes(1))
    assert rows[1][1:] == [closed.low, closed.high, closed.open, closed.close, closed.volume]


async def test_without_start_and_end_the_newest_buckets_come(venue: Venue) -> None:
    for params in ({"granularity": "60"}, {"granularity": "60", "start": _iso(NOW - minutes(5))}):
        status, _, rows = await venue.get("/products/BTC-USD/candles", params)
        assert status == 200 and len(rows) == 300  # one start alone is ignored too
        assert rows[0][0] == int(BTC_1M.tf.floor(NOW).timestamp())


@pytest.mark.parametrize("timeframe", ["5m", "15m", "1h", "6h", "1d"])
async def test_other_granularities(venue: Venue, timeframe: str) -> None:
    key = SeriesKey("coinbase", "BTC-USD", timeframe)
    end = key.tf.floor(NOW)
    start = key.tf.add(end, -20)
    assert await venue.history(key, start, end) == venue.truth(key, start, end)


async def test_before_listing_there_is_nothing(venue: Venue) -> None:
    listed = NOW - timedelta(hours=3)
    got = await venue.history(ETH_1M, listed - minutes(200), listed + minutes(60))
    assert got and min(c.ts for c in got) >= ETH_1M.tf.floor(listed)
    assert await venue.history(ETH_1M, listed - minutes(300), listed - minutes(10)) == []


# --- errors as Coinbase answers them -------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/products/DOGE-USD/candles", {"granularity": "60"}, 404, "NotFound"),
        ("/products/BTC-USD/candles", {"granularity": "120"}, 400, "Unsupported granularity"),
        ("/products/BTC-USD/candles", {"granularity": "1m"}, 400, "Unsupported granularity"),
        ("/products/BTC-USD/candles", {}, 400, "Unsupported granularity"),
        ("/products/BTC-USD/candles",
         {"granularity": "60", "start": "2024-03-01T07:00:00Z", "end": "2024-03-01T12:00:00Z"},
         400, "granularity too small for the requested time range. "
              "Count of aggregations requested exceeds 300"),
        ("/products/BTC-USD/candles",
         {"granularity": "60", "start": "yesterday", "end": "2024-03-01T12:00:00Z"},
         400, "Invalid start: expected an ISO 8601 time"),
        ("/products/BTC-USD/candles",
         {"granularity": "60", "start": "2024-03-01T12:00:00Z", "end": "2024-03-01T11:00:00Z"},
         400, "start must be before end"),
    ],
)  # fmt: skip
async def test_bad_requests_get_coinbase_error_bodies(
    venue: Venue, path: str, params: dict[str, str], status: int, message: str
) -> None:
    got_status, body, payload = await venue.get(path, params)
    assert (got_status, payload) == (status, {"message": message})
    with pytest.raises(VenueError) as info:
        CODEC.parse_history(BTC_1M, got_status, body, NOW)
    assert (info.value.status, info.value.msg) == (status, message)


async def test_300_buckets_pass_and_301_do_not(venue: Venue) -> None:
    start = BTC_1M.tf.floor(NOW) - minutes(400)
    ok = {"granularity": "60", "start": _iso(start), "end": _iso(start + minutes(299))}
    over = {**ok, "end": _iso(start + minutes(300))}  # `end` inclusive: 301 buckets
    status, _, rows = await venue.get("/products/BTC-USD/candles", ok)
    assert status == 200 and len(rows) == 300
    assert (await venue.get("/products/BTC-USD/candles", over))[0] == 400


async def test_rate_limit_is_a_token_bucket_of_15_refilled_10_a_second(venue: Venue) -> None:
    req = CODEC.history_request(BTC_1M, NOW - minutes(5), NOW, 5)
    statuses = [(await venue.fetch(req))[0] for _ in range(16)]  # the clock stands still
    assert statuses == [200] * 15 + [429]
    status, body = await venue.fetch(req)
    assert status == 429 and body == b'{"message": "Public rate limit exceeded"}'
    facts = CODEC.rate_facts(status, {})
    assert facts.rate_limited and facts.retry_after_s == 1.0 and not facts.banned

    venue.clock[0] = NOW + timedelta(seconds=0.1)  # one token back
    assert [(await venue.fetch(req))[0] for _ in range(2)] == [200, 429]
    venue.clock[0] = NOW + timedelta(seconds=1.1)  # what the codec waits after a 429: 10 back
    assert [(await venue.fetch(req))[0] for _ in range(10)] == [200] * 10
    counters = venue.sim.counters
    assert counters.sent_429 == 3
    assert (counters.requests_by_status[200], counters.requests_by_status[429]) == (26, 3)


async def test_candled_sim_speaks_coinbase() -> None:
    port = free_port()
    task = asyncio.create_task(run_sim(f"127.0.0.1:{port}", None, "coinbase"))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    url = f"http://127.0.0.1:{port}/products/BTC-USD/candles?granularity=3600"
                    async with http.get(url) as resp:
                        assert resp.status == 200 and len(await resp.json()) == 300
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # not listening yet
            else:
                pytest.fail("the sim never answered")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")
