"""The simulator's OANDA v20 personality, over a real socket: it answers as
OANDA documents, and the OANDA codec reads back exactly the truth (as OANDA
publishes it: tick-count volumes, no candle without a price, none while the
FX market is closed).

Documentation: https://developer.oanda.com/rest-live-v20/instrument-ep/,
https://developer.oanda.com/rest-live-v20/instrument-df/ and
https://developer.oanda.com/rest-live-v20/troubleshooting-errors/
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from candled.domain import Candle, SeriesKey
from candled.venues import Credentials, HttpRequest, VenueError, get_codec
from candled_sim import SimExchange, parse_scenario
from candled_sim.oanda import SIM_TOKEN, OandaPersonality
from candled_sim.oanda.wire import as_published

CODEC = get_codec("oanda", credentials=Credentials(SIM_TOKEN))
AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}
NOW = datetime(2024, 3, 4, 12, 0, 20, tzinfo=UTC)  # a Monday, 20 s into a minute
# The FX week closed on Friday 2024-03-01 at 17:00 New York (22:00 UTC, before
# DST) and opened again on Sunday 2024-03-03 at 22:00 UTC.
FRIDAY_CLOSE = datetime(2024, 3, 1, 22, tzinfo=UTC)
SUNDAY_OPEN = datetime(2024, 3, 3, 22, tzinfo=UTC)
EUR_1M = SeriesKey("oanda", "EUR_USD", "1m")
GBP_1M = SeriesKey("oanda", "GBP_USD", "1m")
SCENARIO = {
    "seed": 3,
    "symbols": [
        {"symbol": "EUR_USD", "listed": "-60d", "profile": "FOREX"},
        {"symbol": "GBP_USD", "listed": "-60d", "profile": "FOREX", "illiquid": 0.2},
    ],
}
CANDLES = "/v3/instruments/EUR_USD/candles"


@dataclass
class Venue:
    sim: SimExchange
    http: aiohttp.ClientSession
    base: str

    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
    ) -> tuple[int, bytes, Any, Mapping[str, str]]:
        async with self.http.request(
            method, self.base + path, params=params, headers=AUTH if headers is None else headers
        ) as resp:
            body = await resp.read()
            assert resp.content_type == "application/json"
            return resp.status, body, await resp.json(), resp.headers

    async def fetch(self, req: HttpRequest) -> tuple[int, bytes]:
        status, body, _, _ = await self.get(req.path, req.params, req.headers)
        return status, body

    async def history(self, key: SeriesKey, start: datetime, end: datetime) -> list[Candle]:
        status, body = await self.fetch(CODEC.history_request(key, start, end, 5000))
        return CODEC.parse_history(key, status, body, NOW)

    def truth(self, key: SeriesKey, start: datetime, end: datetime) -> list[Candle]:
        sim_key = SeriesKey("sim", key.symbol, key.timeframe)
        bars = self.sim.truth.candles(sim_key, start, end, NOW, sparse=True)
        return [as_published(c) for c in bars]


async def _venue(scenario: dict[str, Any]) -> AsyncIterator[Venue]:
    sim = SimExchange(parse_scenario(scenario, NOW), clock=lambda: NOW, protocol="oanda")
    _, port = await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            yield Venue(sim, http, f"http://127.0.0.1:{port}")
    finally:
        await sim.stop()


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    async for v in _venue(SCENARIO):
        yield v


def same_bars(got: list[Candle], want: list[Candle]) -> bool:
    """Equal up to the venue name (the sim's truth names its own)."""
    return [(c.ts, c.open, c.high, c.low, c.close, c.volume) for c in got] == [
        (c.ts, c.open, c.high, c.low, c.close, c.volume) for c in want
    ]


# --- the codec meets the sim -----------------------------------------------------


@pytest.mark.parametrize("key", [EUR_1M, GBP_1M])
async def test_codec_reads_the_truth_and_no_candle_over_the_weekend(
    venue: Venue, key: SeriesKey
) -> None:
    start, end = FRIDAY_CLOSE - timedelta(hours=2), SUNDAY_OPEN + timedelta(hours=2)
    got = await venue.history(key, start, end)

    assert same_bars(got, venue.truth(key, start, end))
    assert not [c for c in got if FRIDAY_CLOSE <= c.ts < SUNDAY_OPEN]
    assert got[0].ts < FRIDAY_CLOSE and got[-1].ts >= SUNDAY_OPEN
    open_minutes = 4 * 60
    if key == GBP_1M:  # illiquid: minutes without a price have no candle
        assert len(got) < open_minutes * 0.9
    else:
        assert len(got) == open_minutes


async def test_pages_tile_a_week_without_overlap_or_gap(venue: Venue) -> None:
    start = NOW - timedelta(days=7)
    tf = EUR_1M.tf
    pages, cursor, end = [], tf.ceil(start), tf.floor(NOW)
    while cursor < end:
        stop = min(end, tf.add(cursor, 5000))
        pages += await venue.history(EUR_1M, cursor, stop)
        cursor = stop
    assert same_bars(pages, venue.truth(EUR_1M, start, end))


async def test_the_bar_in_progress_is_sent_incomplete_and_dropped(venue: Venue) -> None:
    status, body, payload, _ = await venue.get(CANDLES, {"granularity": "M1", "count": "3"})
    assert status == 200
    assert payload["instrument"] == "EUR_USD" and payload["granularity"] == "M1"
    rows = payload["candles"]
    assert [r["complete"] for r in rows] == [True, True, False]
    assert rows[-1]["time"] == "2024-03-04T12:00:00.000000000Z"
    assert [r["time"] for r in rows[:2]] == ["2024-03-04T11:58:00.000000000Z",
                                             "2024-03-04T11:59:00.000000000Z"]  # fmt: skip
    candles = CODEC.parse_history(EUR_1M, status, body, NOW)
    assert [c.ts for c in candles] == [NOW - timedelta(minutes=2, seconds=20),
                                       NOW - timedelta(minutes=1, seconds=20)]  # fmt: skip


async def test_a_closed_candle_is_complete_only_settle_after_its_close(venue: Venue) -> None:
    """OANDA completes a candle when a price after its end arrives: with
    `settle`, a closed candle stays `complete: false` that long (with its
    final values), then turns complete."""
    assert isinstance(venue.sim.personality, OandaPersonality)
    assert venue.sim.personality.settle == timedelta(0)  # the default: complete at the close
    venue.sim.personality.settle = timedelta(seconds=40)  # NOW is 20 s past 12:00
    _, _, payload, _ = await venue.get(CANDLES, {"granularity": "M1", "count": "3"})
    rows = payload["candles"]
    assert [(r["time"][11:16], r["complete"]) for r in rows] == [
        ("11:58", True), ("11:59", False), ("12:00", False)]  # fmt: skip
    want = venue.truth(EUR_1M, datetime(2024, 3, 4, 11, 59, tzinfo=UTC), NOW)
    assert rows[1]["mid"]["c"] == f"{want[0].close:.8f}"  # closed: its values are final

    venue.sim.personality.settle = timedelta(seconds=20)  # exactly 20 s after its close
    _, _, payload, _ = await venue.get(CANDLES, {"granularity": "M1", "count": "3"})
    assert [r["complete"] for r in payload["candles"]] == [True, True, False]


async def test_from_to_count_and_include_first(venue: Venue) -> None:
    t = datetime(2024, 3, 4, 10, tzinfo=UTC)

    async def times(**params: str) -> list[str]:
        status, _, payload, _ = await venue.get(CANDLES, {"granularity": "M1", **params})
        assert status == 200, payload
        return [row["time"][11:16] for row in payload["candles"]]

    # `from` and `to` include the candles they fall in.
    assert await times(**{"from": "2024-03-04T10:00:30Z", "to": "2024-03-04T10:02:00Z"}) == [
        "10:00", "10:01", "10:02"]  # fmt: skip
    assert await times(**{"from": "2024-03-04T10:00:30Z", "includeFirst": "false",
                          "count": "2"}) == ["10:01", "10:02"]  # fmt: skip
    assert await times(to="2024-03-04T10:00:00Z", count="2") == ["09:59", "10:00"]
    unix = str((t - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    assert await times(**{"from": unix, "count": "1"}) == ["10:00"]


async def test_bid_and_ask_lie_around_the_mid(venue: Venue) -> None:
    params = {"granularity": "M1", "count": "5", "price": "BAM"}
    _, body, payload, _ = await venue.get(CANDLES, params)
    for row in payload["candles"]:
        for k in "ohlc":
            assert float(row["bid"][k]) < float(row["mid"][k]) < float(row["ask"][k])
    bid_codec = get_codec("oanda", credentials=Credentials(SIM_TOKEN), options={"price": "B"})
    bids = bid_codec.parse_history(EUR_1M, 200, body, NOW)
    assert [c.open for c in bids] == [float(r["bid"]["o"]) for r in payload["candles"][:4]]


async def test_daily_candles_on_the_utc_grid(venue: Venue) -> None:
    key = SeriesKey("oanda", "EUR_USD", "1d")
    start = datetime(2024, 2, 1, tzinfo=UTC)
    got = await venue.history(key, start, key.tf.floor(NOW))
    assert same_bars(got, venue.truth(key, start, key.tf.floor(NOW)))
    # Saturday 2024-03-02 has no price at all; Sunday has its evening.
    days = {c.ts.date().isoformat() for c in got}
    assert "2024-03-02" not in days and "2024-03-03" in days
    # OANDA's own default day starts 17:00 New York: not a grid the sim serves.
    status, _, payload, _ = await venue.get(CANDLES, {"granularity": "D", "count": "2"})
    assert status == 400 and "00:00 UTC" in payload["errorMessage"]


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SIM_TOKEN}]
)
async def test_a_missing_or_wrong_token_is_refused(venue: Venue, headers: dict[str, str]) -> None:
    req = CODEC.history_request(EUR_1M, NOW - timedelta(hours=1), NOW, 60)
    status, body, payload, _ = await venue.get(req.path, req.params, headers)
    assert status == 401
    assert payload == {"errorMessage": "Insufficient authorization to perform request."}
    with pytest.raises(VenueError) as info:
        CODEC.parse_history(EUR_1M, status, body, NOW)
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/v3/instruments/XXX_YYY/candles", {}, "Invalid value specified for 'instrument'"),
        (CANDLES, {"granularity": "M3"}, "Invalid value specified for 'granularity'"),
        (CANDLES, {"granularity": "S5"}, "The simulator serves no S5 candles"),
        (CANDLES, {"granularity": "M1", "price": "X"}, "Invalid value specified for 'price'"),
        (CANDLES, {"granularity": "M1", "price": "MM"}, "Invalid value specified for 'price'"),
        (CANDLES, {"granularity": "M1", "count": "0"}, "Invalid value specified for 'count'"),
        (CANDLES, {"granularity": "M1", "count": "5001"}, "Maximum value for 'count' exceeded"),
        (CANDLES, {"granularity": "M1", "from": "2024-03-01T00:00:00Z",
                   "to": "2024-03-04T12:00:00Z"}, "Maximum value for 'count' exceeded"),
        (CANDLES, {"granularity": "M1", "from": "2024-03-04T11:00:00Z",
                   "to": "2024-03-04T12:01:00Z"},
         "Invalid value specified for 'to'. Time is in the future"),
        (CANDLES, {"granularity": "M1", "from": "2024-03-04T11:00:00Z",
                   "to": "2024-03-04T10:00:00Z"}, "Invalid value specified for 'to'"),
        (CANDLES, {"granularity": "M1", "from": "2024-03-04T11:00:00Z",
                   "to": "2024-03-04T12:00:00Z", "count": "10"},
         "Invalid value specified for 'count'"),
        (CANDLES, {"granularity": "M1", "from": "yesterday"}, "Invalid value specified for 'from'"),
        (CANDLES, {"granularity": "M1", "from": "2024-03-04T11:00:00"},
         "Invalid value specified for 'from'"),
        (CANDLES, {"granularity": "M1", "includeFirst": "no"},
         "Invalid value specified for 'includeFirst'"),
        (CANDLES, {"granularity": "D", "dailyAlignment": "24"},
         "Invalid value specified for 'dailyAlignment'"),
        (CANDLES, {"granularity": "D", "alignmentTimezone": "Mars/Olympus"},
         "Invalid value specified for 'alignmentTimezone'"),
        (CANDLES, {"granularity": "W", "weeklyAlignment": "Funday"},
         "Invalid value specified for 'weeklyAlignment'"),
    ],
)  # fmt: skip
async def test_bad_parameters_get_400_and_an_error_message(
    venue: Venue, path: str, params: dict[str, str], message: str
) -> None:
    status, body, payload, _ = await venue.get(path, params)
    assert (status, payload) == (400, {"errorMessage": message})
    with pytest.raises(VenueError, match="venue answered 400"):
        CODEC.parse_history(EUR_1M, status, body, NOW)


async def test_other_methods_and_paths(venue: Venue) -> None:
    status, _, payload, _ = await venue.get(CANDLES, method="POST")
    assert status == 405 and "errorMessage" in payload
    status, _, payload, _ = await venue.get("/v3/instruments/EUR_USD/orderBook")
    assert status == 404 and "errorMessage" in payload


async def test_more_requests_than_the_budget_get_429() -> None:
    # 60 a minute: one request a second (the sim's clock stands still).
    async for venue in _venue({**SCENARIO, "rest": {"weight_per_minute": 60}}):
        req = CODEC.history_request(EUR_1M, NOW - timedelta(hours=1), NOW, 60)
        first, _ = await venue.fetch(req)
        status, _, payload, headers = await venue.get(req.path, req.params)
        assert (first, status) == (200, 429) and "errorMessage" in payload
        facts = CODEC.rate_facts(status, headers)
        assert facts.rate_limited and facts.retry_after_s == 1.0 and not facts.banned
        assert venue.sim.counters.sent_429 == 1
        assert venue.sim.counters.requests_by_status == {200: 1, 429: 1}
