"""Alpaca's pages cut short: the codec names the request that continues a page
(`next_page_token` sent back as `page_token`, the other parameters unchanged),
and the backfill follows it through the fetcher and throttle until the token is
null, a bounded number of times.

Alpaca documents that `limit` is "the maximum number of data points to return in
the response page. The API may return less, even if there are more available
data points in the requested interval. Always check the `next_page_token` for
more pages" (Market Data OpenAPI, the `limit` parameter /v2/stocks/bars shares:
https://docs.alpaca.markets/openapi/market-data-api.json), and "include the token
you have received as the page_token query parameter for the next request you make
while leaving the other parameters unchanged" (Data API v2, "Paging"). Public
reports show Alpaca's crypto bars answering server-sized pages with a token
whatever `limit` asked (ccxt/ccxt issue 30095: 126-420 hourly bars a page).

The pure tests use the docs' shapes (tests/fixtures/alpaca: the minute bars of
`bars_aapl_1min.json`, the token of `bars_aapl_page.json`); the others run the
Alpaca simulator over real sockets, with pages capped below `limit`
(`AlpacaPersonality.page_bars`) or never ending (`endless_pages`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candled.backfill import Backfiller, BackfillJob
from candled.domain import Candle, SeriesKey
from candled.fetch import Fetcher, Response
from candled.store.database import Database
from candled.store.writer import CandleStore
from candled.throttle import VenueThrottle
from candled.venues import CodecError, Credentials, HttpRequest, get_codec
from candled.venues.alpaca import AlpacaCodec
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET, AlpacaPersonality

pytestmark = pytest.mark.timeout(60)
FIXTURES = Path(__file__).parent / "fixtures"
codec = AlpacaCodec("alpaca", Credentials("AKTESTKEY0123456789", "s3cr3t"))
AAPL_1M = SeriesKey("alpaca", "AAPL", "1m")
LATER = datetime(2024, 1, 1, tzinfo=UTC)  # every fixture bar has closed
# The docs' token: base64 of "AAPL|M|2022-04-11T08:00:00.000000000Z".
DOCS_TOKEN = json.loads((FIXTURES / "alpaca" / "bars_aapl_page.json").read_bytes())[
    "next_page_token"
]


def docs_minute_bars() -> list[dict[str, Any]]:
    payload = json.loads((FIXTURES / "alpaca" / "bars_aapl_1min.json").read_bytes())
    rows: list[dict[str, Any]] = payload["bars"]["AAPL"]
    return rows


def answer(rows: list[dict[str, Any]], token: object) -> bytes:
    return json.dumps({"bars": {"AAPL": rows} if rows else {}, "next_page_token": token}).encode()


def window_request() -> HttpRequest:
    """The request of the window holding the docs' minute bars (16:59 to 17:02)."""
    start = datetime(2022, 4, 11, 16, 59, tzinfo=UTC)
    return codec.history_request(AAPL_1M, start, start + timedelta(minutes=3), 9_999)


# --- the codec, no sockets ---------------------------------------------------


def test_a_page_cut_short_names_the_request_that_continues_it() -> None:
    request = window_request()
    first, second = docs_minute_bars()
    page = codec.parse_history_page(AAPL_1M, request, 200, answer([first], DOCS_TOKEN), LATER)

    assert [c.ts for c in page.candles] == [datetime(2022, 4, 11, 16, 59, tzinfo=UTC)]
    assert page.next is not None
    # The same request with the token: path, parameters, weight and key headers.
    assert page.next.method == request.method and page.next.path == request.path
    assert dict(page.next.params) == {**request.params, "page_token": DOCS_TOKEN}
    assert page.next.weight == request.weight
    assert dict(page.next.headers) == dict(request.headers)
    assert "page_token" not in request.params  # the original is left as it was

    # A continuation's own continuation carries the new token, not both.
    token = base64.b64encode(b"AAPL|M|2022-04-11T17:01:00.000000000Z").decode()
    again = codec.parse_history_page(AAPL_1M, page.next, 200, answer([second], token), LATER)
    assert again.next is not None
    assert dict(again.next.params) == {**request.params, "page_token": token}

    last = codec.parse_history_page(AAPL_1M, again.next, 200, answer([], None), LATER)
    assert (last.candles, last.next) == ([], None)


def test_a_page_without_a_token_is_the_last() -> None:
    body = (FIXTURES / "alpaca" / "bars_aapl_1min.json").read_bytes()
    page = codec.parse_history_page(AAPL_1M, window_request(), 200, body, LATER)
    assert page.next is None
    assert page.candles == codec.parse_history(AAPL_1M, 200, body, LATER)
    # An empty token asks for nothing more: sent back, it would be no token at all.
    empty = codec.parse_history_page(AAPL_1M, window_request(), 200, answer([], ""), LATER)
    assert empty.next is None


def test_without_the_request_a_token_is_still_refused() -> None:
    """`parse_history` cannot say how to continue: a token there would mean
    bars left out, so it stays an error (the drivers use `parse_history_page`)."""
    with pytest.raises(CodecError, match="next_page_token"):
        codec.parse_history(AAPL_1M, 200, answer(docs_minute_bars()[:1], DOCS_TOKEN), LATER)


@pytest.mark.parametrize("token", [42, True, ["a"], {"t": "a"}, "x" * 5_000, "a\nb"])
def test_a_token_that_is_no_token_is_malformed(token: object) -> None:
    with pytest.raises(CodecError, match="next_page_token"):
        codec.parse_history_page(AAPL_1M, window_request(), 200, answer([], token), LATER)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=200, deadline=None)
@given(token=JSON | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
def test_whatever_the_token_a_continuation_or_a_codec_error(token: object) -> None:
    request = window_request()
    try:
        page = codec.parse_history_page(AAPL_1M, request, 200, answer([], token), LATER)
    except CodecError:
        return
    if page.next is None:
        assert token in (None, "")
    else:
        assert dict(page.next.params) == {**request.params, "page_token": token}


@pytest.mark.parametrize(
    ("kind", "series", "fixture"),
    [("binance", SeriesKey("binance", "BTCUSDT", "1m"), "binance/klines_btcusdt_1m.json"),
     ("coinbase", SeriesKey("coinbase", "BTC-USD", "1m"), "coinbase/candles_btc_usd_1m.json"),
     ("kraken", SeriesKey("kraken", "BTC/USD", "1m"), "kraken/ohlc_xbtusd_1m.json"),
     ("oanda", SeriesKey("oanda", "EUR_USD", "1m"), "oanda/candles_eur_usd_m1.json")],
)  # fmt: skip
def test_other_venues_answer_a_request_whole(kind: str, series: SeriesKey, fixture: str) -> None:
    other = get_codec(kind, kind, Credentials("token", "secret"))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    request = other.history_request(series, start, start + timedelta(minutes=5), 5)
    body, now = (FIXTURES / fixture).read_bytes(), datetime(2030, 1, 1, tzinfo=UTC)
    page = other.parse_history_page(series, request, 200, body, now)
    assert page.next is None
    assert page.candles == other.parse_history(series, 200, body, now)


# --- the simulator over sockets, and the backfill ------------------------------

NOW = datetime(2024, 3, 1, 18, 0, 30, tzinfo=UTC)  # a Friday, 13:00:30 in New York
SIM_CODEC = get_codec("alpaca", "alpaca", Credentials(SIM_KEY, SIM_SECRET))
EQ0 = SeriesKey("alpaca", "EQ0", "1m")
# Thursday 29 February 2024, a whole UTC day: one backfill window (1,440 < 9,999
# bars) holding one NYSE session, about 270 traded minutes of it.
DAY = BackfillJob(EQ0, datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC),
                  "lookback")  # fmt: skip


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimExchange, AlpacaPersonality, str]]:
    scenario = {
        "seed": 5,
        "symbols": [{"symbol": "EQ0", "listed": "2023-01-01T00:00:00Z", "profile": "EQUITY",
                     "calendar": "XNYS", "illiquid": 0.3}],
    }  # fmt: skip
    exchange = SimExchange(parse_scenario(scenario, NOW), clock=lambda: NOW, protocol="alpaca")
    host, port = await exchange.start("127.0.0.1", 0)
    personality = exchange.personality
    assert isinstance(personality, AlpacaPersonality)
    yield exchange, personality, f"http://{host}:{port}"
    await exchange.stop()


def truth(exchange: SimExchange, job: BackfillJob) -> list[Candle]:
    """The bars Alpaca has for the job's window (sparse: traded minutes only)."""
    key = SeriesKey("sim", job.series.symbol, job.series.timeframe)
    return exchange.truth.candles(key, job.start, job.end, NOW, sparse=True)


def values(candles: Sequence[Candle]) -> list[tuple[object, ...]]:
    """Candles without their venue name (the sim's truth has its own)."""
    return [(c.series.symbol, c.series.timeframe, c.ts, c.open, c.high, c.low, c.close, c.volume)
            for c in candles]  # fmt: skip


async def test_the_sim_answers_short_pages_with_a_token(
    sim: tuple[SimExchange, AlpacaPersonality, str],
) -> None:
    """`page_bars`: fewer bars than `limit` while more exist, and a token; the
    token followed with the same parameters gives every bar once."""
    exchange, personality, url = sim
    personality.page_bars = 25
    request = SIM_CODEC.history_request(EQ0, DAY.start, DAY.end, 9_999)
    rows: list[str] = []
    sizes: list[int] = []
    token: str | None = None
    async with aiohttp.ClientSession() as http:
        while True:
            params: Mapping[str, str] = {
                **request.params,
                **({"page_token": token} if token else {}),
            }
            async with http.get(url + request.path, params=params, headers=request.headers) as r:
                assert r.status == 200
                page = json.loads(await r.read())
            got = page["bars"].get("EQ0", [])
            rows += [bar["t"] for bar in got]
            sizes.append(len(got))
            token = page["next_page_token"]
            if token is None:
                break
    expected = truth(exchange, DAY)
    assert len(expected) > 200 and int(request.params["limit"]) > len(expected)
    assert rows == [c.ts.strftime("%Y-%m-%dT%H:%M:%SZ") for c in expected]
    assert all(size == 25 for size in sizes[:-1]) and sizes[-1] <= 25


class RecordingFetcher(Fetcher):
    """Notes every request's parameters."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.params: list[dict[str, str]] = []

    async def fetch(self, req: HttpRequest) -> Response:
        self.params.append(dict(req.params))
        return await super().fetch(req)


@pytest.fixture
async def db(migrated: str) -> AsyncIterator[Database]:
    database = await Database.connect(migrated)
    yield database
    await database.close()


def backfiller(url: str, db: Database, **kw: Any) -> tuple[Backfiller, RecordingFetcher]:
    # The venue's own budget (200 a minute), as the daemon sets it.
    limits = SIM_CODEC.limits
    throttle = VenueThrottle(limits.rate_capacity, limits.rate_period_s, 5)
    fetcher = RecordingFetcher(url, SIM_CODEC, throttle, retry_base_s=0.05)
    store = CandleStore(db.pool)

    async def sink(candles: Sequence[Candle]) -> None:
        await store.write(candles)

    return Backfiller(SIM_CODEC, fetcher, sink, db.pool, clock=lambda: NOW, **kw), fetcher


async def stored(db: Database, series: SeriesKey) -> list[Candle]:
    rows = await db.pool.fetch(
        """SELECT ts, open, high, low, close, volume FROM candles
           WHERE venue = $1 AND symbol = $2 AND timeframe = $3 ORDER BY ts""",
        series.venue, series.symbol, series.timeframe,
    )  # fmt: skip
    return [Candle(series, r["ts"], *(r[k] for k in ("open", "high", "low", "close", "volume")))
            for r in rows]  # fmt: skip


async def test_a_window_served_in_short_pages_is_stored_whole(
    sim: tuple[SimExchange, AlpacaPersonality, str], db: Database
) -> None:
    exchange, personality, url = sim
    personality.page_bars = 40
    b, fetcher = backfiller(url, db)
    seen: set[datetime] = set()
    async with fetcher:
        result = await b.run_job(DAY, seen)

    expected = truth(exchange, DAY)
    assert result.complete and result.error is None, result
    assert values(await stored(db, EQ0)) == values(expected)  # every bar, value for value
    assert seen == {c.ts for c in expected}  # what the healer judges the window by
    assert result.candles == len(expected)
    # One window: its request, then the same request with each page's token.
    first, *rest = fetcher.params
    pages = -(-len(expected) // 40) + (len(expected) % 40 == 0)  # a full last page: one more
    assert "page_token" not in first and len(rest) == pages - 1 == result.requests - 1
    assert all({k: v for k, v in p.items() if k != "page_token"} == first for p in rest)
    assert len({p["page_token"] for p in rest}) == len(rest)


async def test_pages_that_never_end_are_bounded_with_a_clear_error(
    sim: tuple[SimExchange, AlpacaPersonality, str], db: Database
) -> None:
    _, personality, url = sim
    personality.page_bars = 100
    personality.endless_pages = True
    b, fetcher = backfiller(url, db, max_continuations=6)
    async with fetcher:
        result = await b.run_job(DAY)

    assert not result.complete
    assert result.error is not None and "6 continuation pages" in result.error, result.error
    assert "page_token" in result.error
    assert not result.transient  # not queued again at once: the heal cycle asks later
    assert len(fetcher.params) == result.requests == 7  # the window's request and 6 more
    assert await stored(db, EQ0) == []  # nothing of a window that never completed
