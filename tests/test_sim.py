"""The simulated exchange: its truth model, scenarios, rate limiter, and real sockets.

REST responses are read through the Binance codec, so these tests also check
that the sim and the codec agree on Binance's documented wire format.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from candled import clock as wallclock
from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled.fetch import MAX_BODY
from candled.venues import ClosedBars, Foreign, Heartbeat, Malformed, Reply, StreamEvent, get_codec
from candled.venues.binance import BinanceCodec
from candled_sim import (
    Maintenance,
    Scenario,
    ScenarioError,
    SimExchange,
    Truth,
    load_scenario,
    parse_scenario,
    run_sim,
)
from candled_sim import scenario as scenario_module
from candled_sim.binance.wire import kline_event, kline_frame
from candled_sim.encoding import epoch_ms
from candled_sim.http import RateLimiter

CODEC = get_codec("binance")
STREAM = BinanceCodec().stream
NOW = datetime(2024, 3, 1, 12, 0, 1, tzinfo=UTC)  # one second into a minute
LISTED = NOW - timedelta(hours=3, minutes=30, seconds=20)
BTC_1M = SeriesKey("binance", "BTCUSDT", "1m")
BTC_1S = SeriesKey("binance", "BTCUSDT", "1s")


def truth_of(*maintenance: Maintenance) -> Truth:
    return Truth(7, {"BTCUSDT": LISTED, "ETHUSDT": LISTED - timedelta(days=400)}, maintenance)


# --- truth -----------------------------------------------------------------


@pytest.mark.parametrize("timeframe", SUPPORTED)
def test_truth_bars_are_valid_and_continuous(timeframe: str) -> None:
    series = SeriesKey("binance", "ETHUSDT", timeframe)
    start = NOW - timedelta(seconds=60 * series.tf.nominal_seconds)
    bars = truth_of().candles(series, start, NOW, NOW)
    assert bars, timeframe
    for bar in bars:
        assert 0 < bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.volume >= 0
        assert series.tf.is_aligned(bar.ts) and bar.ts.tzinfo is UTC
    # One price path: every bar opens where the previous one closed.
    assert all(a.close == b.open for a, b in itertools.pairwise(bars))


def test_truth_is_deterministic_per_seed() -> None:
    window = (NOW - timedelta(hours=1), NOW)
    first = truth_of().candles(BTC_1M, *window, NOW)
    assert first == truth_of().candles(BTC_1M, *window, NOW)
    other_seed = Truth(8, {"BTCUSDT": LISTED}).candles(BTC_1M, *window, NOW)
    assert [c.close for c in first] != [c.close for c in other_seed]


def test_truth_starts_at_the_bar_holding_the_listing() -> None:
    truth = truth_of()
    bars = truth.candles(BTC_1M, datetime(2020, 1, 1, tzinfo=UTC), NOW, NOW)
    assert bars[0].ts == BTC_1M.tf.floor(LISTED) == truth.genesis(BTC_1M)
    assert bars[-1].ts == NOW.replace(second=0) - timedelta(minutes=1)  # only closed bars
    assert len(bars) == BTC_1M.tf.count_bars(bars[0].ts, bars[-1].ts) + 1  # no holes
    assert truth.genesis(SeriesKey("binance", "XRPUSDT", "1m")) is None


def test_truth_maintenance_removes_only_bars_wholly_inside() -> None:
    start = NOW.replace(second=0) - timedelta(hours=1)  # 11:00
    end = start + timedelta(minutes=29, seconds=30)  # 11:29:30
    truth = truth_of(Maintenance(start, end, frozenset({"BTCUSDT"})))
    stamps = [c.ts for c in truth.candles(BTC_1M, start - timedelta(minutes=2), NOW, NOW)]
    assert start - timedelta(minutes=1) in stamps
    assert not any(start <= ts <= start + timedelta(minutes=28) for ts in stamps)
    assert start + timedelta(minutes=29) in stamps  # the bar holding the window's end
    daily = SeriesKey("binance", "BTCUSDT", "1d")
    assert truth.exists(daily, daily.tf.floor(start))  # a 30-minute pause leaves the day
    eth = SeriesKey("binance", "ETHUSDT", "1m")
    assert truth.exists(eth, start)  # maintenance of BTCUSDT only
    newest_first = truth.opens_before(BTC_1M, start + timedelta(minutes=29))
    assert next(newest_first) == start - timedelta(minutes=1)  # the window skipped in one step


def test_truth_partial_bar_grows_into_the_final_one() -> None:
    truth, ts = truth_of(), NOW - timedelta(minutes=5)
    final = truth.bar(BTC_1M, ts)
    for second in (0, 15, 30, 59):
        part = truth.partial(BTC_1M, ts, ts + timedelta(seconds=second))
        assert part.open == final.open
        assert final.low <= part.low <= min(part.open, part.close)
        assert max(part.open, part.close) <= part.high <= final.high
        assert 0 <= part.volume <= final.volume


# --- scenario --------------------------------------------------------------


def test_the_documented_example_scenario_parses() -> None:
    doc = scenario_module.__doc__ or ""
    example = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert example is not None
    scenario = parse_scenario(tomllib.loads(example.group(1)), NOW)
    assert scenario.seed == 42
    assert scenario.listings == {"BTCUSDT": NOW - timedelta(hours=2)}
    assert scenario.maintenance == (
        Maintenance(
            NOW - timedelta(minutes=30), NOW - timedelta(minutes=20), frozenset({"BTCUSDT"})
        ),
    )
    faults = scenario.faults
    assert (faults.http_errors.every, faults.http_error_burst, faults.http_error_status) == (
        10,
        3,
        503,
    )
    assert faults.connection_resets.probability == 0.05
    assert (faults.slow_responses.every, faults.slow_delay_s) == (4, 2.0)
    assert (faults.ws_drop_after_s, faults.ws_idle_after_s, faults.ws_idle_duration_s) == (
        30,
        10,
        20,
    )
    assert faults.lost_closing_frames.every == 5 and faults.malformed_frames.probability == 0.1
    assert (faults.html_errors.every, faults.html_error_statuses) == (6, (502, 503, 403))
    assert (faults.non_json.every, faults.truncated_bodies.every) == (9, 7)
    assert (faults.oversized_bodies.every, faults.oversized_size) == (11, 33_555_456)
    assert faults.oversized_size > MAX_BODY, "the fault must cross the fetcher's bound"
    assert faults.never_answers.every == 13
    assert (faults.storm_start, faults.storm_duration_s, faults.storm_status) == (
        NOW + timedelta(minutes=1),
        180,
        502,
    )
    assert (faults.foreign_frames.every, faults.ws_mute.every) == (4, 3)
    assert (scenario.ban_s, scenario.max_ban_s, scenario.max_incoming_per_s) == (120, 259_200, 5)


def test_scenario_defaults_and_times() -> None:
    assert Scenario().weight_per_minute == 6000
    assert set(Scenario().listings) == {"BTCUSDT", "ETHUSDT"}
    scenario = parse_scenario(
        {
            "symbols": [
                {"symbol": "A", "listed": "2024-01-01T00:00:00Z"},
                {"symbol": "B", "listed": datetime(2024, 1, 2, 1, tzinfo=UTC)},
                {"symbol": "C", "listed": "+90m"},
            ],
            "ws": {"update_interval": "250ms", "ping_interval": 5},
        },
        NOW,
    )
    assert scenario.listings == {
        "A": datetime(2024, 1, 1, tzinfo=UTC),
        "B": datetime(2024, 1, 2, 1, tzinfo=UTC),
        "C": NOW + timedelta(minutes=90),
    }
    assert (scenario.update_interval_s, scenario.ping_interval_s) == (0.25, 5.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sede": 1}, "unknown key.*sede"),
        ({"faults": {"slow_responses": {"evry": 1}}}, r"faults\.slow_responses\.evry"),
        ({"seed": True}, "seed: expected int"),
        ({"rest": {"ban": "2 minutes"}}, r"rest\.ban: expected a positive duration"),
        ({"rest": {"weight_per_minute": 0}}, "at least 1"),
        ({"symbols": []}, "at least one symbol"),
        ({"symbols": [{"listed": "-1h"}]}, r"symbols\[0\]\.symbol: missing"),
        ({"symbols": [{"symbol": "A", "listed": "2024-01-01T00:00:00"}]}, "with offset"),
        ({"maintenance": [{"start": "-1h", "end": "-2h"}]}, "after start"),
        ({"faults": {"malformed_frames": {"every": 2, "probability": 0.5}}}, "not both"),
        ({"faults": {"lost_closing_frames": {"probability": 2}}}, "probability in"),
        ({"faults": {"http_errors": {"status": 404}}}, "5xx"),
        ({"faults": {"ws_idle": {"duration": "5s"}}}, r"faults\.ws_idle\.after: missing"),
        ({"faults": {"html_errors": {"statuses": [404]}}}, r"html_errors\.statuses: .*403 or 5xx"),
        ({"faults": {"http_storm": {"duration": "1m"}}}, r"faults\.http_storm\.start: missing"),
        ({"faults": {"http_storm": {"start": "+1s", "status": 429}}}, "5xx"),
        ({"faults": {"oversized_bodies": {"size": 0}}}, r"oversized_bodies\.size: must be"),
        ({"maintenance": [{"start": "-1h", "end": "-0m", "symbols": [{}]}]}, "list of symbols"),
    ],
)
def test_scenario_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data, NOW)


def test_load_scenario_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("seed = [")
    with pytest.raises(ScenarioError, match=r"bad\.toml"):
        load_scenario(path, NOW)
    path.write_text('seed = 3\n[[symbols]]\nsymbol = "X"\nlisted = "-1d"\n')
    assert load_scenario(path, NOW).listings == {"X": NOW - timedelta(days=1)}


# --- rate limiter ----------------------------------------------------------


def test_limiter_429_then_escalating_418() -> None:
    limiter = RateLimiter(budget=4, ban_s=10, max_ban_s=25)
    t = NOW
    assert [limiter.admit("ip", 2, t).status for _ in range(2)] == [200, 200]
    over = limiter.admit("ip", 2, t)
    assert (over.status, over.used_weight, over.retry_after_s) == (429, 6, 59)
    assert limiter.admit("other", 2, t).status == 200  # budgets are per IP
    # Sent before the client could have read the 429: 429 again, no ban.
    in_flight = limiter.admit("ip", 2, t + timedelta(seconds=0.5))
    assert (in_flight.status, in_flight.in_flight) == (429, True)
    t += timedelta(seconds=2)
    ban = limiter.admit("ip", 2, t)
    assert (ban.status, ban.retry_after_s, ban.during_ban) == (418, 10, False)
    during = limiter.admit("ip", 2, t + timedelta(seconds=9))
    assert (during.status, during.retry_after_s, during.during_ban) == (418, 1, True)
    # The ban is over and the minute has rolled: a fresh budget.
    t = NOW + timedelta(minutes=1)
    assert limiter.admit("ip", 4, t).status == 200
    assert limiter.admit("ip", 2, t).status == 429
    t += timedelta(seconds=2)
    assert limiter.admit("ip", 2, t).retry_after_s == 20  # second ban: doubled
    t += timedelta(minutes=1)
    limiter.admit("ip", 6, t)
    assert limiter.admit("ip", 1, t + timedelta(seconds=2)).retry_after_s == 25  # capped


# --- REST over a real socket -------------------------------------------------

SimFactory = Callable[..., Awaitable[tuple[SimExchange, str]]]


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Start sims on 127.0.0.1:0; all are stopped after the test."""
    sims: list[SimExchange] = []

    async def start(
        scenario: dict[str, Any] | None = None,
        frozen_at: datetime | None = None,
        clock: list[datetime] | None = None,
    ) -> tuple[SimExchange, str]:
        """A sim whose clock stands still at `frozen_at` (or reads `clock[0]`,
        which the test moves), or runs in real time."""
        listed: object = LISTED if frozen_at else "-3h"
        data = {"seed": 7, "symbols": [{"symbol": "BTCUSDT", "listed": listed}], **(scenario or {})}
        if frozen_at is None:
            sim = SimExchange(parse_scenario(data, wallclock.now()))
        else:
            cell = clock or [frozen_at]
            sim = SimExchange(parse_scenario(data, frozen_at), clock=lambda: cell[0])
        sims.append(sim)
        host, port = await sim.start("127.0.0.1", 0)
        return sim, f"{host}:{port}"

    yield start
    for sim in sims:
        await sim.stop()


async def get(address: str, path: str, **params: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(f"http://{address}{path}", params=params, timeout=aiohttp.ClientTimeout(5)) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def fetch(address: str, series: SeriesKey, now: datetime, **params: str) -> list[Candle]:
    status, _, body = await get(
        address, "/api/v3/klines", symbol=series.symbol, interval=series.timeframe, **params
    )
    return CODEC.parse_history(series, status, body, now)


def ms(ts: datetime) -> str:
    return str(int(ts.timestamp() * 1000))


async def test_klines_window_equals_truth(start_sim: SimFactory) -> None:
    sim, address = await start_sim(frozen_at=NOW)
    start, end = NOW - timedelta(hours=2), NOW - timedelta(minutes=30)
    request = CODEC.history_request(BTC_1M, start, end, 1000)
    status, headers, body = await get(address, request.path, **request.params)

    candles = CODEC.parse_history(BTC_1M, status, body, NOW)
    assert candles == sim.truth.candles(BTC_1M, start, end, NOW)
    assert len(candles) == 90  # [start, end) exactly: endTime was sent inclusive
    assert CODEC.rate_facts(status, headers).used_weight == request.weight


async def test_start_before_listing_returns_the_first_bars(start_sim: SimFactory) -> None:
    sim, address = await start_sim(frozen_at=NOW)
    genesis = CODEC.genesis_request(BTC_1M)
    status, _, body = await get(address, genesis.path, **genesis.params)
    (first,) = CODEC.parse_history(BTC_1M, status, body, NOW)
    assert first.ts == BTC_1M.tf.floor(LISTED) == sim.truth.genesis(BTC_1M)

    hourly = SeriesKey("binance", "BTCUSDT", "1h")
    bars = await fetch(address, hourly, NOW, startTime="0", limit="2")
    assert [b.ts for b in bars] == [
        datetime(2024, 3, 1, 8, tzinfo=UTC),
        datetime(2024, 3, 1, 9, tzinfo=UTC),
    ]


async def test_end_time_only_and_no_times_return_the_newest(start_sim: SimFactory) -> None:
    sim, address = await start_sim(frozen_at=NOW)
    end = NOW - timedelta(hours=1)  # 11:00:01, inclusive: the newest bar opens at 11:00
    bars = await fetch(address, BTC_1M, NOW, endTime=ms(end), limit="5")
    newest = BTC_1M.tf.floor(end)
    assert [b.ts for b in bars] == [newest - timedelta(minutes=i) for i in range(4, -1, -1)]

    # Without times: the newest bars, the last of them still open (left out by the codec).
    status, _, body = await get(
        address, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit="3"
    )
    rows = json.loads(body)
    assert [row[0] for row in rows] == [
        int(ms(NOW.replace(second=0) - timedelta(minutes=i))) for i in (2, 1, 0)
    ]
    closed = CODEC.parse_history(BTC_1M, status, body, NOW)
    assert closed == sim.truth.candles(BTC_1M, NOW - timedelta(minutes=2, seconds=1), NOW, NOW)


async def test_limit_default_and_maximum(start_sim: SimFactory) -> None:
    _, address = await start_sim(frozen_at=NOW)
    one_s = SeriesKey("binance", "BTCUSDT", "1s")
    start = ms(NOW - timedelta(hours=2))
    assert len(await fetch(address, one_s, NOW, startTime=start)) == 500
    assert len(await fetch(address, one_s, NOW, startTime=start, limit="5000")) == 1000
    assert len(await fetch(address, one_s, NOW, startTime=start, limit="7")) == 7


async def test_maintenance_gap(start_sim: SimFactory) -> None:
    gap = {"maintenance": [{"start": "-60m", "end": "-50m"}]}
    sim, address = await start_sim(gap, frozen_at=NOW)
    start = NOW - timedelta(minutes=70)
    candles = await fetch(
        address, BTC_1M, NOW, startTime=ms(start), endTime=ms(NOW - timedelta(minutes=40))
    )
    stamps = [c.ts for c in candles]
    # 10:51..11:20 less the 9 bars wholly inside 11:00:01..11:10:01
    assert len(stamps) == 30 - 9
    assert NOW.replace(second=0) - timedelta(minutes=55) not in stamps
    assert candles == sim.truth.candles(
        BTC_1M, start, NOW - timedelta(minutes=40) + timedelta(seconds=1), NOW
    )
    # A window wholly inside the maintenance has no data at all.
    inside = await fetch(
        address,
        BTC_1M,
        NOW,
        startTime=ms(NOW - timedelta(minutes=58)),
        endTime=ms(NOW - timedelta(minutes=52)),
    )
    assert inside == []


async def test_errors_look_like_binance(start_sim: SimFactory) -> None:
    _, address = await start_sim(frozen_at=NOW)
    status, _, body = await get(address, "/api/v3/klines", symbol="NOPE", interval="1m")
    assert (status, json.loads(body)) == (400, {"code": -1121, "msg": "Invalid symbol."})
    status, _, body = await get(address, "/api/v3/klines", symbol="BTCUSDT", interval="2m")
    assert (status, json.loads(body)["code"]) == (400, -1120)
    status, _, body = await get(address, "/api/v3/klines", interval="1m")
    assert (status, json.loads(body)["code"]) == (400, -1102)
    status, _, body = await get(
        address, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime="x"
    )
    assert (status, json.loads(body)["code"]) == (400, -1100)
    status, _, body = await get(address, "/api/v3/ping")
    assert (status, json.loads(body)) == (200, {})
    status, _, body = await get(address, "/api/v3/time")
    assert json.loads(body) == {"serverTime": int(ms(NOW))}


async def test_over_budget_429_then_418_for_a_client_that_keeps_going(
    start_sim: SimFactory,
) -> None:
    now = [NOW]
    sim, address = await start_sim({"rest": {"weight_per_minute": 10}}, frozen_at=NOW, clock=now)
    answers = []
    for i in range(8):
        if i == 6:  # the client saw the 429 and went on anyway
            now[0] += timedelta(seconds=2)
        answers.append(await get(address, "/api/v3/klines", symbol="BTCUSDT", interval="1m"))
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * 5 + [429, 418, 418]

    facts = [CODEC.rate_facts(status, headers) for status, headers, _ in answers]
    assert [f.used_weight for f in facts[:6]] == [2, 4, 6, 8, 10, 12]
    assert facts[5].rate_limited and facts[5].retry_after_s == 59  # until the minute rolls
    assert facts[6].banned and facts[6].retry_after_s == 120
    assert json.loads(answers[5][2])["code"] == -1003
    counters = sim.counters
    assert (counters.sent_429, counters.sent_418, counters.requests_during_ban) == (1, 2, 1)
    assert counters.requests_by_status == {200: 5, 429: 1, 418: 2}
    assert counters.weight_used == 16


async def test_http_faults(start_sim: SimFactory) -> None:
    faults = {
        "http_errors": {"every": 2, "burst": 2, "status": 502},
        "slow_responses": {"every": 2, "delay": "300ms"},
    }
    sim, address = await start_sim({"faults": faults}, frozen_at=NOW)
    statuses, slow = [], []
    for _ in range(6):
        began = time.monotonic()
        status, _, _ = await get(
            address, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit="1"
        )
        statuses.append(status)
        slow.append(time.monotonic() - began > 0.25)
    assert statuses == [200, 502, 502, 200, 502, 502]
    # Error bursts answer before the slow dice rolls: it saw requests 1 and 4.
    assert slow == [False, False, False, True, False, False]
    assert (sim.counters.http_errors_injected, sim.counters.slow_responses) == (4, 1)

    sim, address = await start_sim({"faults": {"connection_resets": {"every": 1}}}, frozen_at=NOW)
    with pytest.raises(aiohttp.ClientError):
        await get(address, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    # aiohttp retries an idempotent request once when the connection drops.
    assert sim.counters.connection_resets in (1, 2)
    assert sim.counters.requests_by_status == {}


async def klines_answer(address: str, timeout_s: float = 5.0) -> tuple[int, str, bytes]:
    """One klines request, read whole: status, content type and body."""
    url = f"http://{address}/api/v3/klines"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(timeout_s)) as http,
        http.get(url, params={"symbol": "BTCUSDT", "interval": "1m", "limit": "20"}) as r,
    ):
        return r.status, r.content_type, await r.read()


async def test_broken_answers(start_sim: SimFactory) -> None:
    """Each body fault fires on every other request it sees, varying its kind by turn."""
    faults = {
        "html_errors": {"every": 2, "statuses": [502, 403]},
        "non_json": {"every": 2},
        "truncated_bodies": {"every": 2},
        "oversized_bodies": {"every": 2, "size": 300_000},
    }
    sim, address = await start_sim({"faults": faults}, frozen_at=NOW)
    answers = [await klines_answer(address) for _ in range(9)]

    # html_errors sees every request and takes 2, 4, 6, 8.
    assert [a[:2] for a in answers[1::2]] == [
        (502, "text/html"), (403, "text/html"), (502, "text/html"), (403, "text/html"),
    ]  # fmt: skip
    assert b"could not be satisfied" in answers[1][2]
    # The odd ones reach non_json, which takes 3 and 7 (an HTML page, then text
    # claiming to be JSON); truncated_bodies sees 1, 5, 9 and takes 5 (the JSON
    # cut in half, a complete HTTP answer); oversized sees 1, 9 and takes 9.
    first, third, fifth, seventh, ninth = answers[0::2]
    assert first[0] == 200 and len(json.loads(first[2])) == 20
    assert third[:2] == (200, "text/html") and seventh[:2] == (200, "application/json")
    for answer in (third, fifth, seventh):
        with pytest.raises(ValueError):
            json.loads(answer[2])
    assert fifth == (200, "application/json", first[2][: len(first[2]) // 2])
    assert ninth[0] == 200 and len(ninth[2]) >= 300_000 and json.loads(ninth[2]) == []
    c = sim.counters
    assert (c.html_errors, c.non_json, c.truncated_bodies, c.oversized_bodies) == (4, 2, 1, 1)

    # The second truncation cuts the connection mid-body, after announcing the whole.
    sim, address = await start_sim({"faults": {"truncated_bodies": {"every": 1}}}, frozen_at=NOW)
    await klines_answer(address)
    with pytest.raises(aiohttp.ClientPayloadError):
        await klines_answer(address)


async def test_never_answers_until_the_client_gives_up(start_sim: SimFactory) -> None:
    sim, address = await start_sim({"faults": {"never_answers": {"every": 2}}}, frozen_at=NOW)
    await klines_answer(address)
    with pytest.raises(TimeoutError):
        await klines_answer(address, timeout_s=0.5)
    await klines_answer(address)
    assert sim.counters.never_answered == 1
    assert sim.counters.requests_by_status == {200: 2}  # the hung request got no answer


async def test_http_storm_answers_every_klines_request_with_5xx(start_sim: SimFactory) -> None:
    clock = [NOW]
    storm = {"http_storm": {"start": "+10s", "duration": "1m", "status": 502}}
    sim, address = await start_sim({"faults": storm}, frozen_at=NOW, clock=clock)
    statuses = []
    for offset_s in (9, 10, 30, 69, 70):
        clock[0] = NOW + timedelta(seconds=offset_s)
        statuses.append((await klines_answer(address))[0])
    assert statuses == [200, 502, 502, 502, 200]
    assert sim.counters.storm_errors == 3


# --- WebSocket -------------------------------------------------------------


async def frames(ws: ClientConnection, seconds: float) -> list[tuple[float, str]]:
    """Every text frame received within `seconds`, with its arrival time."""
    received: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        received.append((time.monotonic(), str(message)))
    return received


def parsed(received: list[tuple[float, str]], *carried: SeriesKey) -> list[list[StreamEvent]]:
    """The events of each frame, for a session carrying the streams of `carried`."""
    session = STREAM.session(carried)
    return [session.receive(text) for _, text in received]


def is_data(events: list[StreamEvent]) -> bool:
    return any(isinstance(e, ClosedBars | Heartbeat) for e in events)


def bars_of(results: list[list[StreamEvent]]) -> list[Candle]:
    return [c for events in results for e in events if isinstance(e, ClosedBars) for c in e.candles]


def of_type(results: list[list[StreamEvent]], kind: type) -> list[StreamEvent]:
    return [e for events in results for e in events if isinstance(e, kind)]


async def test_ws_closed_1s_bars_match_truth(start_sim: SimFactory) -> None:
    sim, address = await start_sim()
    btc_1s = SeriesKey("binance", "BTCUSDT", "1s")
    async with connect(f"ws://{address}{STREAM.connect_path([btc_1s, BTC_1M])}") as ws:
        received = await frames(ws, 3.3)
    results = parsed(received, btc_1s)  # the 1m stream's frames: foreign here
    assert not of_type(results, Malformed)
    assert of_type(results, Foreign) and all(is_data(r) for r in results if r != [Foreign(1)])
    assert all(is_data(r) for r in parsed(received, btc_1s, BTC_1M))  # both streams' frames
    closed = bars_of(results)
    assert len(closed) >= 2
    now = wallclock.now()
    for candle in closed:
        assert [candle] == sim.truth.candles(
            candle.series, candle.ts, candle.ts + timedelta(seconds=1), now
        )
    stamps = [c.ts for c in closed]
    assert stamps == sorted(set(stamps))  # one closing frame per bar, in order
    assert sim.counters.closing_frames_sent >= len(closed)


@pytest.mark.parametrize("stream", ["btcusdt@kline_1s", None])
def test_kline_frame_encoded_ahead_is_the_event_as_encoded_at_the_close(
    stream: str | None,
) -> None:
    bar = truth_of().bar(BTC_1S, NOW)
    head, tail = kline_frame(bar, True, stream)
    for sent in (NOW + timedelta(seconds=1, milliseconds=3), NOW):
        event = kline_event(bar, True, sent)
        payload = event if stream is None else {"stream": stream, "data": event}
        assert head + str(epoch_ms(sent)) + tail == json.dumps(payload)


async def test_ws_closing_frames_encoded_ahead_equal_truth_and_are_timed(
    start_sim: SimFactory,
) -> None:
    """Closing frames are encoded before their close (truth is pure): the
    text is what encoding at the close gives; each is counted by how late it
    left."""
    sim, address = await start_sim({"symbols": [{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT"}]})
    eth_1s = SeriesKey("binance", "ETHUSDT", "1s")
    async with connect(f"ws://{address}{STREAM.connect_path([BTC_1S, eth_1s])}") as ws:
        received = await frames(ws, 3.3)
    closing = [json.loads(text) for _, text in received if json.loads(text)["data"]["k"]["x"]]
    assert len(closing) >= 4
    for frame in closing:
        k, sent = frame["data"]["k"], datetime.fromtimestamp(frame["data"]["E"] / 1000, UTC)
        series = SeriesKey("sim", k["s"], "1s")
        bar = sim.truth.bar(series, datetime.fromtimestamp(k["t"] / 1000, UTC))
        expected = {"stream": frame["stream"], "data": kline_event(bar, True, sent)}
        assert json.dumps(frame) == json.dumps(expected)
    assert sum(sim.counters.closing_lag_ms.values()) == sim.counters.closing_frames_sent
    assert sum(sim.counters.closing_burst_cpu_ms.values()) >= 2  # a tick's burst, counted


async def test_ws_subscribe_unsubscribe_and_raw_streams(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    btc_1s = SeriesKey("binance", "BTCUSDT", "1s")
    session = STREAM.session()
    async with connect(f"ws://{address}/ws") as ws:
        (subscribe,) = session.subscribe([btc_1s])
        await ws.send(subscribe)
        assert session.receive(str(await ws.recv())) == [Reply(1)]
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10}))
        assert json.loads(await ws.recv()) == {"result": ["btcusdt@kline_1s"], "id": 10}

        data = [text for _, text in await frames(ws, 1.2) if is_data(session.receive(text))]
        assert data
        assert json.loads(data[0])["e"] == "kline"  # /ws sends raw events, not the wrapper

        (unsubscribe,) = session.unsubscribe([btc_1s])
        await ws.send(unsubscribe)
        later = [session.receive(text) for _, text in await frames(ws, 1.3)]
        assert [e.request_id for e in of_type(later, Reply)] == [2]
        # A push already under way may still land just after the reply; then silence.
        assert len(of_type(later, Foreign)) <= 2 and not any(is_data(r) for r in later)

        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 4}))
        (error,) = session.receive(str(await ws.recv()))
        assert isinstance(error, Reply) and error.request_id == 4 and error.error is not None


async def test_ws_too_many_messages_and_shutdown_close_the_connection(
    start_sim: SimFactory,
) -> None:
    sim, address = await start_sim()
    async with connect(f"ws://{address}/stream") as ws:
        for request_id in range(7):  # Binance allows 5 incoming messages a second
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}))
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008

    async with connect(f"ws://{address}/stream") as ws:
        await sim.stop()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert sim.counters.ws_connections == 2 and sim.counters.ws_open == 0


async def test_ws_invalid_stream_in_url_is_refused(start_sim: SimFactory) -> None:
    _, address = await start_sim()
    status, _, _ = await get(address, "/stream", streams="btcusdt@kline_7m")
    assert status == 400


async def test_ws_malformed_and_lost_closing_frames(start_sim: SimFactory) -> None:
    faults = {"malformed_frames": {"every": 1}, "lost_closing_frames": {"every": 1}}
    sim, address = await start_sim({"faults": faults})
    async with connect(f"ws://{address}/ws/btcusdt@kline_1s") as ws:
        results = parsed(await frames(ws, 2.3), SeriesKey("binance", "BTCUSDT", "1s"))
    assert of_type(results, Malformed)
    assert any(is_data(r) for r in results)
    assert not bars_of(results)  # every closing frame was lost
    assert sim.counters.malformed_frames_sent >= 1 and sim.counters.closing_frames_lost >= 1


async def test_ws_drop_and_idle(start_sim: SimFactory) -> None:
    sim, address = await start_sim(
        {
            "ws": {"update_interval": "100ms"},
            "faults": {
                "ws_drop": {"every": "1500ms"},
                "ws_idle": {"after": "300ms", "duration": "700ms", "pings": False},
            },
        }
    )
    async with connect(f"ws://{address}/ws/btcusdt@kline_1m") as ws:
        received: list[float] = []
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
                    received.append(time.monotonic())
    assert info.value.rcvd is None  # dropped: no close frame from the server
    gaps = [b - a for a, b in itertools.pairwise(received)]
    assert max(gaps) > 0.5  # the idle period
    assert sim.counters.ws_drops == 1 and sim.counters.ws_idle_periods == 1


async def test_ws_foreign_frames_carry_real_bars_of_streams_not_subscribed(
    start_sim: SimFactory,
) -> None:
    sim, address = await start_sim({"faults": {"foreign_frames": {"every": 1}}})
    btc_1s = SeriesKey("binance", "BTCUSDT", "1s")
    async with connect(f"ws://{address}{STREAM.connect_path([btc_1s])}") as ws:
        received = await frames(ws, 2.3)
    results = parsed(received, btc_1s)
    foreign = [frame for frame, events in zip(received, results, strict=True)
               if events == [Foreign(1)]]  # fmt: skip
    # Before each of our frames, the newest closed bar of the first stream of
    # the symbol not subscribed here (1m): real data, not asked for.
    assert foreign and len(foreign) == sum(is_data(r) for r in results)
    of_1m = parsed(foreign, BTC_1M)
    assert all(is_data(r) for r in of_1m)  # each of the 1m stream
    now = wallclock.now()
    for bar in bars_of(of_1m):
        assert [bar] == sim.truth.candles(BTC_1M, bar.ts, bar.ts + timedelta(minutes=1), now)
    assert sim.counters.foreign_frames_sent == len(foreign)


async def test_ws_mute_connection_sends_nothing_at_all(start_sim: SimFactory) -> None:
    sim, address = await start_sim(
        {"ws": {"ping_interval": "200ms"}, "faults": {"ws_mute": {"every": 2}}}
    )
    path = "/ws/btcusdt@kline_1s"
    async with connect(f"ws://{address}{path}") as first:
        assert any(is_data(r) for r in parsed(await frames(first, 1.2), BTC_1S))
    # The second connection: open, and then silence. No data, no reply to a
    # request, no pong, no ping (the server's pings come every 200 ms).
    async with connect(f"ws://{address}{path}", ping_interval=None, close_timeout=0.5) as mute:
        await mute.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        pong = await mute.ping()
        assert await frames(mute, 1.2) == []
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pong, 0.1)
    pings = sim.counters.pings_sent
    async with connect(f"ws://{address}{path}") as third:
        assert any(is_data(r) for r in parsed(await frames(third, 1.2), BTC_1S))
    assert sim.counters.ws_mute == 1 and sim.counters.pings_sent > pings
    # The mute session ends once the client has gone.
    async with asyncio.timeout(5):
        while sim.counters.ws_open:
            await asyncio.sleep(0.05)


async def test_run_sim_serves_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text('[[symbols]]\nsymbol = "SIMUSDT"\nlisted = "-1h"\n')
    with socket.socket() as sock:  # a free port, closed again: run_sim takes an address
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(run_sim(address, path))
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    answer = await get(address, "/api/v3/klines", symbol="SIMUSDT", interval="1h")
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # not listening yet
        status, _, body = answer
        assert status == 200 and len(json.loads(body)) in (1, 2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
