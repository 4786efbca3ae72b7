"""The Alpaca personality over real sockets, read through the Alpaca codec: the
sim encodes Alpaca's documented shapes, the codec decodes them, and both must
meet on the simulator's truth (sparse bars inside NYSE sessions, page_token
pagination, errors, the key pair, the stream with auth and corrected bars)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from candled import clock as wallclock
from candled.collector import collect
from candled.domain import Candle, SeriesKey
from candled.venues import ClosedBars, Credentials, StreamEvent, Subscribed, VenueError, get_codec
from candled.venues.alpaca import AlpacaCodec
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET, AlpacaPersonality, corrected
from candled_sim.alpaca import stream as personality_module

CODEC = get_codec("alpaca", "alpaca", Credentials(SIM_KEY, SIM_SECRET))
STREAM = AlpacaCodec("alpaca", Credentials(SIM_KEY, SIM_SECRET)).stream
LOGIN = STREAM.login_message()
AUTH = {"APCA-API-KEY-ID": SIM_KEY, "APCA-API-SECRET-KEY": SIM_SECRET}
NOW = datetime(2024, 3, 1, 18, 0, 30, tzinfo=UTC)  # a Friday, 13:00:30 in New York
SYMBOLS = [f"EQ{i}" for i in range(12)]
SEED = 5

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


def scenario(weight_per_minute: int = 6000) -> dict[str, Any]:
    return {
        "seed": SEED,
        "rest": {"weight_per_minute": weight_per_minute},
        "symbols": [{"symbol": s, "listed": "2023-01-01T00:00:00Z", "profile": "EQUITY",
                     "calendar": "XNYS", "illiquid": 0.3} for s in SYMBOLS],
    }  # fmt: skip


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Alpaca sims on 127.0.0.1:0 with the clock given (default: NOW, frozen)."""
    sims: list[SimExchange] = []

    async def start(
        clock: Callable[[], datetime] = lambda: NOW, **extra: Any
    ) -> tuple[SimExchange, str]:
        sim = SimExchange(parse_scenario(scenario(**extra), clock()), clock=clock,
                          protocol="alpaca")  # fmt: skip
        sims.append(sim)
        host, port = await sim.start("127.0.0.1", 0)
        return sim, f"{host}:{port}"

    yield start
    for sim in sims:
        await sim.stop()


async def get(
    address: str,
    params: Mapping[str, str],
    path: str = "/v2/stocks/bars",
    headers: Mapping[str, str] = AUTH,
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{address}{path}", params=params, headers=headers) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


def closed(events: list[StreamEvent]) -> list[Candle]:
    return [c for e in events if isinstance(e, ClosedBars) for c in e.candles]


def values(candles: list[Candle]) -> list[tuple[object, ...]]:
    """Candles without their venue name (the sim's truth has its own)."""
    return [(c.series.symbol, c.series.timeframe, c.ts, c.open, c.high, c.low, c.close, c.volume)
            for c in candles]  # fmt: skip


def truth_of(sim: SimExchange, key: SeriesKey, start: datetime, end: datetime) -> list[Candle]:
    return sim.truth.candles(SeriesKey("sim", key.symbol, key.timeframe), start, end, NOW,
                             sparse=True)  # fmt: skip


# --- REST ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeframe", "depth"),
    [("1m", timedelta(days=3)), ("5m", timedelta(days=6)), ("1h", timedelta(days=20)),
     ("1d", timedelta(days=60))],
)  # fmt: skip
async def test_codec_and_sim_meet_on_the_truth(
    start_sim: SimFactory, timeframe: str, depth: timedelta
) -> None:
    sim, address = await start_sim()
    key = SeriesKey("alpaca", "EQ0", timeframe)
    start = NOW - depth
    request = CODEC.history_request(key, start, NOW, CODEC.limits.page_size)
    status, body, _ = await get(address, request.params, request.path, request.headers)
    candles = CODEC.parse_history(key, status, body, NOW)

    expected = truth_of(sim, key, start, NOW)
    assert candles and values(candles) == values(expected)
    # Sparse: the illiquid bars of the sessions are missing, and there is no
    # bar outside them (weekend, nights).
    sessions = list(sim.truth.opens(SeriesKey("sim", "EQ0", timeframe), start, key.tf.floor(NOW)))
    assert len(candles) < len(sessions)
    assert json.loads(body)["next_page_token"] is None


async def test_the_bar_in_progress_is_served_and_left_out_by_the_codec(
    start_sim: SimFactory,
) -> None:
    sim, address = await start_sim()
    opened = NOW.replace(second=0)
    symbol = next(s for s in SYMBOLS if sim.truth.traded(SeriesKey("sim", s, "1m"), opened))
    key = SeriesKey("alpaca", symbol, "1m")
    status, body, _ = await get(address, {"symbols": symbol, "timeframe": "1Min",
                                      "start": "2024-03-01T17:55:00Z"})  # fmt: skip
    rows = json.loads(body)["bars"][symbol]
    assert rows[-1]["t"] == "2024-03-01T18:00:00Z"  # forming: its values so far
    assert rows[-1]["v"] < sim.truth.bar(SeriesKey("sim", symbol, "1m"), opened).volume
    closed = CODEC.parse_history(key, status, body, NOW)
    assert closed[-1].ts < opened
    assert values(closed) == values(truth_of(sim, key, opened - timedelta(minutes=5), NOW))


async def test_page_token_pagination_over_symbols_and_time(start_sim: SimFactory) -> None:
    """As documented: a full page carries `next_page_token`; asking again with
    it and the other parameters unchanged continues where the page stopped,
    symbol by symbol, then by time, until the token is null."""
    sim, address = await start_sim()
    params = {"symbols": "EQ2,EQ1", "timeframe": "15Min", "start": "2024-02-29T00:00:00Z",
              "end": "2024-03-01T16:00:00Z", "limit": "7"}  # fmt: skip
    pages, token = [], None
    while True:
        status, body, _ = await get(address, {**params, **({"page_token": token} if token else {})})
        assert status == 200
        page = json.loads(body)
        pages.append(page)
        token = page["next_page_token"]
        if token is None:
            break
        symbol, unit, stamp = base64.b64decode(token).decode().split("|")
        last = page["bars"][symbol][-1]["t"]
        assert (unit, stamp) == ("M", last.replace("Z", ".000000000Z"))  # documented form

    got = [(symbol, bar["t"]) for page in pages for symbol, bars in page["bars"].items()
           for bar in bars]  # fmt: skip
    assert all(sum(len(b) for b in page["bars"].values()) == 7 for page in pages[:-1])
    expected = [
        (s, c.ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
        for s in ("EQ1", "EQ2")
        for c in sim.truth.candles(SeriesKey("sim", s, "15m"), datetime(2024, 2, 29, tzinfo=UTC),
                                   datetime(2024, 3, 1, 16, 1, tzinfo=UTC), NOW, sparse=True)
    ]  # fmt: skip
    assert got == expected  # symbols in order, each oldest first, nothing twice or lost
    assert len(pages) == -(-len(expected) // 7) + (len(expected) % 7 == 0)


async def test_pagination_in_descending_order(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    params = {"symbols": "EQ3", "timeframe": "1Hour", "start": "2024-02-26T00:00:00Z",
              "end": "2024-03-01T18:00:00Z", "sort": "desc"}  # fmt: skip
    _, body, _ = await get(address, params)
    everything = [bar["t"] for bar in json.loads(body)["bars"]["EQ3"]]
    assert everything == sorted(everything, reverse=True) and len(everything) > 10
    paged, token = [], None
    while True:
        extra: dict[str, str] = {"page_token": token} if token else {}
        _, body, _ = await get(address, {**params, "limit": "4", **extra})
        page = json.loads(body)
        paged += [bar["t"] for bar in page["bars"].get("EQ3", [])]
        token = page["next_page_token"]
        if token is None:
            break
    assert paged == everything


async def test_single_symbol_endpoint(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    status, body, _ = await get(address, {"timeframe": "1Day", "start": "2024-02-01", "limit": "3"},
                                "/v2/stocks/EQ4/bars")  # fmt: skip
    page = json.loads(body)
    assert status == 200 and page["symbol"] == "EQ4" and len(page["bars"]) == 3
    assert page["bars"][0]["t"].endswith("T05:00:00Z")  # midnight in New York (EST)
    assert set(page["bars"][0]) == {"t", "o", "h", "l", "c", "v", "n", "vw"}
    assert page["next_page_token"] is not None


async def test_an_unknown_symbol_has_no_bars(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    status, body, _ = await get(address, {"symbols": "NOPE", "timeframe": "1Min"})
    assert (status, json.loads(body)) == (200, {"bars": {}, "next_page_token": None})


@pytest.mark.parametrize(
    "headers",
    [{}, {"APCA-API-KEY-ID": SIM_KEY}, {**AUTH, "APCA-API-SECRET-KEY": "wrong"},
     {"Authorization": f"Bearer {SIM_KEY}"}],
)  # fmt: skip
async def test_without_the_key_pair_forbidden(
    start_sim: SimFactory, headers: dict[str, str]
) -> None:
    _, address = await start_sim()
    status, body, _ = await get(address, {"symbols": "EQ0", "timeframe": "1Min"}, headers=headers)
    assert (status, json.loads(body)) == (403, {"message": "forbidden"})
    with pytest.raises(VenueError, match="forbidden"):
        CODEC.parse_history(SeriesKey("alpaca", "EQ0", "1m"), status, body, NOW)


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"timeframe": "1Min"}, 400, "missing symbols"),
        ({"symbols": "EQ0"}, 400, "missing timeframe"),
        ({"symbols": "EQ0", "timeframe": "1Min", "interval": "1"}, 400, "unexpected parameter"),
        ({"symbols": "EQ0", "timeframe": "60Min"}, 422, "invalid timeframe"),
        ({"symbols": "EQ0", "timeframe": "1Minute"}, 422, "invalid timeframe"),
        ({"symbols": "EQ0", "timeframe": "2Hour"}, 422, "serves no 2Hour"),
        ({"symbols": "EQ0", "timeframe": "1Min", "limit": "0"}, 422, "invalid limit"),
        ({"symbols": "EQ0", "timeframe": "1Min", "limit": "10001"}, 422, "invalid limit"),
        ({"symbols": "EQ0", "timeframe": "1Min", "start": "yesterday"}, 422, "invalid start"),
        ({"symbols": "EQ0", "timeframe": "1Min", "start": "2024-03-01T10:00:00"}, 422,
         "invalid start"),
        ({"symbols": "EQ0", "timeframe": "1Min", "start": "2024-03-01T10:00:00Z",
          "end": "2024-03-01T09:00:00Z"}, 422, "end should not be before start"),
        ({"symbols": "EQ0", "timeframe": "1Min", "feed": "otc"}, 422, "invalid feed"),
        ({"symbols": "EQ0", "timeframe": "1Min", "sort": "up"}, 422, "invalid sort"),
        ({"symbols": "EQ0", "timeframe": "1Min", "adjustment": "none"}, 422, "invalid adjustment"),
        ({"symbols": "EQ0", "timeframe": "1Min", "page_token": "%%%"}, 422, "invalid page_token"),
    ],
)  # fmt: skip
async def test_bad_requests_get_the_documented_status_and_body(
    start_sim: SimFactory, params: dict[str, str], status: int, message: str
) -> None:
    _, address = await start_sim()
    got, body, _ = await get(address, params)
    answer = json.loads(body)
    assert got == status and message in answer["message"]
    assert answer["code"] == (42210000 if status == 422 else 40010001)
    with pytest.raises(VenueError, match=message):
        CODEC.parse_history(SeriesKey("alpaca", "EQ0", "1m"), got, body, NOW)


async def test_over_the_minute_budget_too_many_requests(start_sim: SimFactory) -> None:
    sim, address = await start_sim(weight_per_minute=3)
    answers = [await get(address, {"symbols": "EQ0", "timeframe": "1Min"}) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    status, body, headers = answers[3]
    assert json.loads(body) == {"message": "too many requests"}
    facts = CODEC.rate_facts(status, headers)
    assert facts.rate_limited and facts.used_weight == 3 and not facts.banned
    assert CODEC.rate_facts(*answers[0][::2]).used_weight == 1
    assert headers["X-RateLimit-Reset"] == str(
        int(datetime(2024, 3, 1, 18, 1, tzinfo=UTC).timestamp())
    )
    assert sim.counters.sent_429 == 1 and sim.counters.requests_by_status[429] == 1


# --- stream ----------------------------------------------------------------


def shifted_clock(target: datetime) -> Callable[[], datetime]:
    """A clock running at real speed from `target` (the stream sleeps in real time)."""
    offset = target - wallclock.now()
    return lambda: wallclock.now() + offset


async def receive(ws: ClientConnection, within: float = 5) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        message = json.loads(await ws.recv())
    assert isinstance(message, list)
    return message


async def open_stream(address: str, feed: str = "iex") -> ClientConnection:
    ws = await connect(f"ws://{address}/v2/{feed}")
    assert await receive(ws) == [{"T": "success", "msg": "connected"}]
    return ws


async def authenticate(ws: ClientConnection) -> None:
    await ws.send(LOGIN)
    assert await receive(ws) == [{"T": "success", "msg": "authenticated"}]


async def test_auth_and_subscription_flow(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    ws = await open_stream(address, "sip")
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ0"]}))
    assert await receive(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
    await ws.send(json.dumps({"action": "auth", "key": SIM_KEY, "secret": "wrong"}))
    assert await receive(ws) == [{"T": "error", "code": 402, "msg": "auth failed"}]
    await authenticate(ws)
    await ws.send(LOGIN)
    assert await receive(ws) == [{"T": "error", "code": 403, "msg": "already authenticated"}]
    await ws.send("{not json")
    assert await receive(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]

    session = STREAM.session()
    await ws.send(*session.subscribe([SeriesKey("alpaca", s, "1m") for s in SYMBOLS[:2]]))
    (answer,) = await receive(ws)
    assert answer == {"T": "subscription", "trades": [], "quotes": [], "bars": ["EQ0", "EQ1"],
                      "updatedBars": ["EQ0", "EQ1"], "dailyBars": []}  # fmt: skip
    assert session.receive(json.dumps([answer])) == [Subscribed()]  # no id to match
    await ws.send(*session.unsubscribe([SeriesKey("alpaca", "EQ0", "1m")]))
    (answer,) = await receive(ws)
    assert (answer["bars"], answer["updatedBars"]) == (["EQ1"], ["EQ1"])

    # One connection per key and endpoint: a second one is refused once it authenticates.
    second = await open_stream(address, "sip")
    await second.send(LOGIN)
    assert await receive(second) == [
        {"T": "error", "code": 406, "msg": "connection limit exceeded"}
    ]
    await second.wait_closed()
    await ws.close()


async def test_auth_timeout(start_sim: SimFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(personality_module, "AUTH_TIMEOUT_S", 0.2)
    _, address = await start_sim()
    ws = await open_stream(address)
    assert await receive(ws) == [{"T": "error", "code": 404, "msg": "auth timeout"}]
    await ws.wait_closed()


async def test_unknown_feed_is_not_found(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    async with aiohttp.ClientSession() as http, http.get(f"http://{address}/v2/otc") as response:
        assert response.status == 404


async def test_minute_bars_then_corrected_bars_meet_the_truth(start_sim: SimFactory) -> None:
    """Just after a minute closes, one frame holds the bars of every subscribed
    symbol that traded; a corrected bar ("u") follows with the truth's final
    values, the first "b" of that minute having had less volume."""
    keys = {s: SeriesKey("sim", s, "1m") for s in SYMBOLS}
    truth = SimExchange(parse_scenario(scenario(), NOW)).truth

    def traded(minute: datetime) -> list[str]:
        return [s for s in SYMBOLS if truth.traded(keys[s], minute)]

    # A minute in which some symbols did not trade and some bars get corrected.
    minute = next(
        m for m in (datetime(2024, 3, 1, 15, i, tzinfo=UTC) for i in range(60))
        if len(traded(m)) < len(SYMBOLS) and any(corrected(SEED, s, m) for s in traded(m))
    )  # fmt: skip
    fixed = [s for s in traded(minute) if corrected(SEED, s, minute)]
    sim, address = await start_sim(shifted_clock(minute.replace(second=57)))
    personality = sim.personality
    assert isinstance(personality, AlpacaPersonality)
    personality.correction_delay_s = 1.0

    ws = await open_stream(address)
    await authenticate(ws)
    session = STREAM.session()
    await ws.send(*session.subscribe([SeriesKey("alpaca", s, "1m") for s in SYMBOLS]))
    await receive(ws)  # the subscription
    bars = closed(session.receive(json.dumps(await receive(ws, within=10))))
    # No bar without a trade.
    assert sorted(c.series.symbol for c in bars) == sorted(traded(minute))
    for candle in bars:
        final = sim.truth.bar(keys[candle.series.symbol], minute)
        first_volume = final.volume if candle.series.symbol not in fixed else candle.volume
        assert candle.ts == minute and candle.volume == first_volume
        assert (candle.open, candle.high, candle.low, candle.close) == (
            final.open, final.high, final.low, final.close
        )  # fmt: skip
    updates = closed(session.receive(json.dumps(await receive(ws, within=5))))
    assert sorted(values(updates)) == sorted(
        values([sim.truth.bar(keys[s], minute) for s in fixed])
    )
    assert all(c.volume < u.volume for c in bars for u in updates
               if c.series == u.series)  # fmt: skip
    assert sim.counters.corrected_bars_sent == len(fixed)
    await ws.close()


async def test_the_collector_logs_in_and_collects_minute_bars(start_sim: SimFactory) -> None:
    """The collector's own `collect` with the codec: auth message, subscribe
    without any reply id, closed bars of several symbols per frame."""
    minute = datetime(2024, 3, 1, 15, 59, tzinfo=UTC)
    sim, address = await start_sim(shifted_clock(minute.replace(second=58)))
    series = [SeriesKey("alpaca", s, "1m") for s in SYMBOLS]
    traded = [k for k in series if sim.truth.traded(SeriesKey("sim", k.symbol, "1m"), minute)]
    result = await collect(STREAM, f"ws://{address}", series, total_timeout=15,
                           max_candles=len(traded))  # fmt: skip
    assert not result.partial
    assert sorted(c.series.symbol for c in result.candles) == sorted(k.symbol for k in traded)
    assert all(c.ts == minute for c in result.candles)
