"""The Kraken personality over real sockets, read through the Kraken codec:
the sim encodes Kraken's documented shapes, the codec decodes them, and both
must meet on the simulator's truth (the 720-entry horizon, the unfinished last
row, sparse bars, errors in HTTP 200 bodies, the v2 `ohlc` channel)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from candled import clock as wallclock
from candled.backfill import Backfiller, BackfillJob
from candled.collector import collect
from candled.domain import Candle, SeriesKey
from candled.fetch import Fetcher
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.throttle import VenueThrottle
from candled.venues import (
    ClosedBars,
    Heartbeat,
    RateLimitedAnswer,
    Reply,
    StreamEvent,
    VenueError,
    get_codec,
)
from candled.venues.kraken import KrakenCodec
from candled.venues.wire import parse_rfc3339
from candled_sim import SimExchange, parse_scenario
from candled_sim.kraken import KrakenPersonality
from tests.daemon_proc import wait_until

CODEC = get_codec("kraken")
STREAM = KrakenCodec().stream
NOW = datetime(2024, 3, 1, 12, 0, 30, tzinfo=UTC)  # half a minute into a bar
AAA, BBB = SeriesKey("kraken", "AAA/USD", "1m"), SeriesKey("kraken", "BBB/USD", "1m")
DEEP = NOW - timedelta(days=3)  # far past the horizon

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Kraken sims on 127.0.0.1:0 whose clock reads `clock[0]` (the test moves it)."""
    sims: list[SimExchange] = []

    async def start(
        clock: list[datetime], symbols: list[dict[str, Any]] | None = None, **extra: Any
    ) -> tuple[SimExchange, str]:
        listed = {"listed": "2024-01-01T00:00:00Z"}
        data = {"seed": 5, "symbols": symbols or [{"symbol": s.symbol, **listed} for s in (AAA, BBB)],
                **extra}  # fmt: skip
        sim = SimExchange(parse_scenario(data, clock[0]), clock=lambda: clock[0], protocol="kraken")
        sims.append(sim)
        host, port = await sim.start("127.0.0.1", 0)
        return sim, f"{host}:{port}"

    yield start
    for sim in sims:
        await sim.stop()


async def get(address: str, **params: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{address}/0/public/OHLC", params=params) as response,
    ):
        return response.status, await response.read()


async def history(address: str, series: SeriesKey, start: datetime, now: datetime) -> list[Candle]:
    request = CODEC.history_request(series, start, start + timedelta(hours=12), 720)
    status, body = await get(address, **request.params)
    return CODEC.parse_history(series, status, body, now)


def values(candles: list[Candle]) -> list[tuple[object, ...]]:
    """Candles without their venue name (the sim's truth has its own)."""
    return [(c.series.symbol, c.series.timeframe, c.ts, c.open, c.high, c.low, c.close, c.volume)
            for c in candles]  # fmt: skip


def personality(sim: SimExchange) -> KrakenPersonality:
    assert isinstance(sim.personality, KrakenPersonality)
    return sim.personality


# --- REST ------------------------------------------------------------------


async def test_a_since_past_the_horizon_still_gets_only_the_newest_720(
    start_sim: SimFactory,
) -> None:
    sim, address = await start_sim([NOW])
    request = CODEC.history_request(AAA, DEEP, DEEP + timedelta(hours=12), 720)
    status, body = await get(address, **request.params)

    rows = json.loads(body)["result"]["AAA/USD"]  # assetVersion=1: the name we asked with
    assert status == 200 and len(rows) == 720
    assert rows[-1][0] == int(AAA.tf.floor(NOW).timestamp())  # the bar still forming ...
    candles = CODEC.parse_history(AAA, status, body, NOW)
    assert len(candles) == 719  # ... which the codec drops: 719 closed bars reachable
    assert CODEC.limits.history_horizon_bars == 719
    horizon = AAA.tf.add(AAA.tf.floor(NOW), -719)
    assert values(candles) == values(sim.truth.candles(AAA, horizon, NOW, NOW))


async def test_since_keeps_later_entries_and_the_forming_one(start_sim: SimFactory) -> None:
    sim, address = await start_sim([NOW])
    start = NOW - timedelta(minutes=10, seconds=30)  # 11:50:00
    candles = await history(address, BBB, start, NOW)
    assert values(candles) == values(sim.truth.candles(BBB, start, NOW, NOW))
    assert len(candles) == 10

    # Past the newest closed bar: only the forming entry, always present.
    status, body = await get(address, pair="BBB/USD", since=str(int(NOW.timestamp()) + 3600))
    (row,) = json.loads(body)["result"]["BBBUSD"]  # no assetVersion: the internal-style name
    assert row[0] == int(BBB.tf.floor(NOW).timestamp())
    assert CODEC.parse_history(BBB, status, body, NOW) == []


async def test_with_settle_a_closed_bar_stays_the_uncommitted_last_entry(
    start_sim: SimFactory,
) -> None:
    sim, address = await start_sim([NOW])  # 30 s past 12:00
    assert personality(sim).settle == timedelta(0)  # the default: committed at the close
    personality(sim).settle = timedelta(seconds=40)
    since = str(int(NOW.timestamp()) - 300)
    status, body = await get(address, pair="AAA/USD", since=since, assetVersion="1")
    rows = json.loads(body)["result"]["AAA/USD"]
    # 11:59 closed 30 s ago and is still the last, uncommitted entry; 12:00 is not listed yet.
    assert rows[-1][0] == int(AAA.tf.floor(NOW).timestamp()) - 60
    closed = CODEC.parse_history(AAA, status, body, NOW)
    assert closed and closed[-1].ts == AAA.tf.floor(NOW) - timedelta(minutes=2)

    personality(sim).settle = timedelta(seconds=30)  # committed exactly now
    status, body = await get(address, pair="AAA/USD", since=since, assetVersion="1")
    assert json.loads(body)["result"]["AAA/USD"][-1][0] == int(AAA.tf.floor(NOW).timestamp())
    assert CODEC.parse_history(AAA, status, body, NOW)[-1].ts == AAA.tf.floor(NOW) - timedelta(
        minutes=1
    )


async def test_every_interval_the_codec_knows(start_sim: SimFactory) -> None:
    sim, address = await start_sim([NOW])
    for timeframe in ("5m", "15m", "30m", "1h", "4h", "1d"):
        series = SeriesKey("kraken", "AAA/USD", timeframe)
        start = series.tf.add(series.tf.floor(NOW), -20)
        candles = await history(address, series, start, NOW)
        assert values(candles) == values(sim.truth.candles(series, start, NOW, NOW)), timeframe


async def test_sparse_bars_and_a_horizon_counted_in_entries(start_sim: SimFactory) -> None:
    symbols = [{"symbol": "AAA/USD", "listed": "2024-01-01T00:00:00Z", "illiquid": 0.3}]
    sim, address = await start_sim([NOW], symbols)
    candles = await history(address, AAA, DEEP, NOW)

    assert len(candles) == 719  # 719 bars with trades: they reach back further in time
    oldest = candles[0].ts
    assert oldest < AAA.tf.add(AAA.tf.floor(NOW), -719)
    assert values(candles) == values(sim.truth.candles(AAA, oldest, NOW, NOW, sparse=True))
    assert not all(sim.truth.traded(AAA, ts) for ts in sim.truth.opens(AAA, oldest, NOW))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"pair": "ZZZ/USD"}, "EQuery:Unknown asset pair"),
        ({}, "EGeneral:Invalid arguments"),
        ({"pair": "AAA/USD", "interval": "2"}, "EGeneral:Invalid arguments"),
        ({"pair": "AAA/USD", "interval": "21600"}, "EGeneral:Invalid arguments"),  # not simulated
        ({"pair": "AAA/USD", "since": "yesterday"}, "EGeneral:Invalid arguments"),
        ({"pair": "AAA/USD", "assetVersion": "2"}, "EGeneral:Invalid arguments"),
    ],
)
async def test_errors_are_http_200_with_an_error_array(
    start_sim: SimFactory, params: dict[str, str], error: str
) -> None:
    _, address = await start_sim([NOW])
    status, body = await get(address, **params)
    assert (status, json.loads(body)) == (200, {"error": [error]})
    with pytest.raises(VenueError, match=error):
        CODEC.parse_history(AAA, status, body, NOW)


async def test_over_a_request_a_second_is_too_many_requests(start_sim: SimFactory) -> None:
    sim, address = await start_sim([NOW])
    answers = [await get(address, pair="AAA/USD") for _ in range(61)]
    assert all(json.loads(body)["error"] == [] for _, body in answers[:60])
    status, body = answers[60]
    with pytest.raises(RateLimitedAnswer, match="EGeneral:Too many requests"):
        CODEC.parse_history(AAA, status, body, NOW)
    assert status == 200 and sim.counters.sent_429 == 1
    assert not CODEC.rate_facts(status, {}).rate_limited  # the status does not say it
    assert len(personality(sim).ohlc_requests) == 60  # refused requests are not served


async def test_a_refusal_in_the_body_holds_the_throttle_like_a_429(
    start_sim: SimFactory, tsdb_dsn: str
) -> None:
    now = wallclock.now()
    sim, address = await start_sim([now])
    for _ in range(60):  # spend the minute's budget
        await get(address, pair="AAA/USD")
    db = await Database.connect(tsdb_dsn)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        throttle = VenueThrottle(100, 1.0, 5, window_s=1.0)
        async with Fetcher(f"http://{address}", CODEC, throttle, retry_base_s=0.05) as fetcher:

            async def sink(candles: Sequence[Candle]) -> None:
                raise AssertionError("a refused page has no candles")

            backfiller = Backfiller(CODEC, fetcher, sink, db.pool)
            end = AAA.tf.floor(now)
            result = await backfiller.run_job(BackfillJob(AAA, end - timedelta(minutes=10), end,
                                                          "repair"))  # fmt: skip
    finally:
        await db.close()
    # Each refusal blocked the throttle; the page was asked three times, then given up.
    assert not result.complete and result.error and "Too many requests" in result.error
    assert throttle.rate_limited == 3 and sim.counters.sent_429 == 3
    assert len(personality(sim).ohlc_requests) == 60


async def test_the_request_log(start_sim: SimFactory) -> None:
    sim, address = await start_sim([NOW])
    await history(address, AAA, DEEP, NOW)
    (logged,) = personality(sim).ohlc_requests
    assert (logged.symbol, logged.timeframe, logged.at) == ("AAA/USD", "1m", NOW)
    assert logged.since == int(DEEP.timestamp()) - 1


# --- WebSocket v2 ------------------------------------------------------------


async def receive(ws: ClientConnection, count: int, within: float = 5) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def test_stream_bars_finalised_by_their_successor_equal_truth(
    start_sim: SimFactory,
) -> None:
    """The collector's own `collect` with the codec against the sim: the
    snapshot's closed bar at once, then each bar when the next one opens."""
    clock = [NOW.replace(second=58)]
    sim, address = await start_sim(clock, ws={"update_interval": "1s"})
    task = asyncio.create_task(
        collect(STREAM, f"ws://{address}", [AAA, BBB], total_timeout=15, max_candles=4)
    )

    async def updated() -> bool:  # subscribed: snapshots and an update of the 12:00 bar
        return sim.counters.frames_sent >= 2

    await wait_until(updated, within=10)
    clock[0] = NOW.replace(minute=1, second=0, microsecond=500_000)  # 12:00 has closed
    result = await task

    assert not result.partial
    closed = sorted(result.candles, key=lambda c: (c.ts, c.series.symbol))
    expected = [sim.truth.bar(SeriesKey("sim", s.symbol, "1m"), ts)
                for ts in (NOW.replace(minute=59, hour=11, second=0), NOW.replace(second=0))
                for s in (AAA, BBB)]  # fmt: skip
    assert values(closed) == values(expected)  # final values, not the last partial ones


def closed_of(events: list[StreamEvent]) -> list[Candle]:
    return [c for e in events if isinstance(e, ClosedBars) for c in e.candles]


def opens(message: dict[str, Any]) -> list[tuple[str, int]]:
    """The symbol and open minute of each bar of an `ohlc` message."""
    return [(d["symbol"], parse_rfc3339(d["interval_begin"]).minute) for d in message["data"]]


async def test_stream_status_acks_snapshot_updates(start_sim: SimFactory) -> None:
    _, address = await start_sim([NOW])
    session = STREAM.session()
    async with connect(f"ws://{address}{session.path}") as ws:
        (status,) = await receive(ws, 1)
        assert status["channel"] == "status" and status["data"][0]["system"] == "online"
        assert session.receive(json.dumps(status)) == []  # neither data nor noise

        (subscribe,) = session.subscribe([AAA, BBB])
        await ws.send(subscribe)
        messages = await receive(ws, 4)  # per symbol: an ack, then its snapshot
        acks = [session.receive(json.dumps(m)) for m in messages[::2]]
        assert acks == [[Reply(1)], [Reply(1)]] and session.awaiting == frozenset()
        assert [m["type"] for m in messages[1::2]] == ["snapshot", "snapshot"]
        assert [bar for m in messages[1::2] for bar in opens(m)] == [
            ("AAA/USD", 59), ("AAA/USD", 0), ("BBB/USD", 59), ("BBB/USD", 0),
        ]  # fmt: skip
        # Each snapshot closes its 11:59 bar; 12:00 is still forming.
        closed = [c for m in messages[1::2] for c in closed_of(session.receive(json.dumps(m)))]
        assert [(c.series.symbol, c.ts.minute) for c in closed] == [
            ("AAA/USD", 59), ("BBB/USD", 59),
        ]  # fmt: skip

        (update,) = await receive(ws, 1)
        assert update["type"] == "update" and {s for s, _ in opens(update)} <= {
            "AAA/USD",
            "BBB/USD",
        }
        assert session.receive(json.dumps(update)) == [Heartbeat()]  # the 12:00 bar, updated


async def test_stream_refusals_pong_unsubscribe_and_heartbeats(start_sim: SimFactory) -> None:
    symbols = [{"symbol": "NEW/USD", "listed": "+1h"}]  # nothing to push yet: heartbeats
    _, address = await start_sim([NOW], symbols)
    new = SeriesKey("kraken", "NEW/USD", "1m")
    session = STREAM.session()
    async with connect(f"ws://{address}/v2") as ws:
        await receive(ws, 1)  # status
        await ws.send(*session.subscribe([SeriesKey("kraken", "ZZZ/USD", "1m")]))
        assert session.receive(json.dumps((await receive(ws, 1))[0])) == [
            Reply(1, "Currency pair not supported ZZZ/USD")
        ]

        await ws.send("{not json")
        (bad,) = await receive(ws, 1)
        (refused,) = session.receive(json.dumps(bad))
        assert bad["success"] is False and isinstance(refused, Reply) and refused.error

        await ws.send(json.dumps({"method": "ping", "req_id": 20}))
        assert session.receive(json.dumps((await receive(ws, 1))[0])) == [Reply(20)]

        await ws.send(*session.subscribe([new]))
        (ack,) = await receive(ws, 1)  # no snapshot: the pair has no bar yet
        assert ack["success"] is True and session.receive(json.dumps(ack)) == [Reply(2)]
        (heartbeat,) = await receive(ws, 1)
        assert heartbeat == {"channel": "heartbeat"}
        assert session.receive(json.dumps(heartbeat)) == [Heartbeat()]

        await ws.send(*session.unsubscribe([new]))
        (gone,) = await receive(ws, 1)
        assert (gone["method"], gone["success"], gone["req_id"]) == ("unsubscribe", True, 3)
        with pytest.raises(TimeoutError):  # nothing subscribed: nothing sent, not even heartbeats
            await receive(ws, 1, within=2.5)


async def test_sparse_stream_skips_bars_without_trades(start_sim: SimFactory) -> None:
    symbols = [{"symbol": "AAA/USD", "listed": "2024-01-01T00:00:00Z", "illiquid": 0.5}]
    sim, address = await start_sim([NOW], symbols)
    truth_key = SeriesKey("sim", "AAA/USD", "1m")
    async with connect(f"ws://{address}/v2") as ws:
        await receive(ws, 1)
        await ws.send(*STREAM.session().subscribe([AAA]))
        await receive(ws, 1)  # ack
        (snapshot,) = await receive(ws, 1)
        bars = [parse_rfc3339(d["interval_begin"]) for d in snapshot["data"]]
        assert all(sim.truth.traded(truth_key, ts) for ts in bars)
        last = max(ts for ts in sim.truth.opens(truth_key, NOW - timedelta(hours=1), NOW)
                   if sim.truth.traded(truth_key, ts) and ts < AAA.tf.floor(NOW))  # fmt: skip
        assert bars[0] == last
