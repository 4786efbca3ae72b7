"""Alpaca's stream errors, each handled deliberately.

Alpaca's market-data stream answers with `[{"T":"error","code":N,"msg":...}]`
(docs.alpaca.markets/docs/streaming-market-data, "Errors"; the frames of
`fixtures/alpaca/stream_errors.json` are that table's codes and words): 400
invalid syntax, 401 not authenticated, 402 auth failed, 403 already
authenticated, 404 auth timeout, 405 symbol limit exceeded, 406 connection limit
exceeded ("in most subscriptions ... this limit is 1"), 407 slow client, 409
insufficient subscription ("any attempt to access a data feed not available for
your subscription will result in an error during authentication"), 410 invalid
subscribe action for this feed, 500 internal error.

The stream session turns each into a typed outcome (a `Refusal` event with its
`StreamError`); the collector acts on the outcome: a refused key or plan (402, 409, 405) and a message the venue
rejects (400, 401, 410: a bug on candled's side) fail loudly and are retried
only after a long pause; 406 (another connection holds the key) backs off long;
407, 500 and 404 reconnect as usual; 403 changes nothing.

Session tests read recorded frames (no sockets); collector tests run the real
simulator over real sockets and judge the spacing of the connections it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect

from candled import clock
from candled.collector import Collector, CollectorSettings
from candled.config import VenueConfig
from candled.domain import Candle, SeriesKey
from candled.health import HealthFacts, VenueHealth, assess
from candled.venue_runtime import key_source
from candled.venues import (
    Credentials,
    LoggedIn,
    Refusal,
    StreamCodec,
    StreamError,
    StreamEvent,
    StreamFault,
    Subscribed,
    get_codec,
)
from candled.venues.alpaca import AlpacaCodec, AlpacaSession, AlpacaStream
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET, AlpacaPersonality

FIXTURES = Path(__file__).parent / "fixtures" / "alpaca"
KEY, SECRET = "PKTESTKEY0123456789", "test-secret-not-real"
SIP = AlpacaCodec("us-sip", Credentials(KEY, SECRET), {"feed": "sip"}).stream
SYMBOLS = [f"EQ{i}" for i in range(4)]
FRAMES: list[list[dict[str, Any]]] = json.loads((FIXTURES / "stream_errors.json").read_text())
# What each documented code means for the collector.
EXPECTED = {
    400: StreamFault.REJECTED,  # our message did not follow the specification
    401: StreamFault.REJECTED,  # we subscribed before authenticating
    402: StreamFault.KEY_REFUSED,
    403: StreamFault.HARMLESS,  # authenticated twice: the session still stands
    404: StreamFault.VENUE_FAULT,  # our auth came late: a slow link
    405: StreamFault.NOT_ENTITLED,  # more symbols than the plan allows
    406: StreamFault.CONNECTION_LIMIT,
    407: StreamFault.VENUE_FAULT,  # slow client: disconnected
    409: StreamFault.NOT_ENTITLED,  # a feed the plan does not include
    410: StreamFault.REJECTED,  # a channel the feed does not have
    500: StreamFault.VENUE_FAULT,
}


# --- the session: recorded frames, no sockets ------------------------------------


def received(frame: object) -> list[StreamEvent]:
    """The events of `frame` (JSON text, or a value to write as JSON) in a new session."""
    return SIP.session().receive(frame if isinstance(frame, str) else json.dumps(frame))


def refusal(frame: object) -> StreamError | None:
    """The stream error of `frame`'s `Refusal`, if it gives one."""
    return next((e.error for e in received(frame) if isinstance(e, Refusal)), None)


def test_the_fixture_holds_every_documented_code() -> None:
    assert sorted(frame[0]["code"] for frame in FRAMES) == sorted(EXPECTED)


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: str(f[0]["code"]))
def test_each_documented_code_is_a_typed_outcome(frame: list[dict[str, Any]]) -> None:
    (message,) = frame
    (event,) = received(frame)  # nothing else: no bars, no login
    assert isinstance(event, Refusal)
    error = event.error
    assert (error.fault, error.code, error.said) == (
        EXPECTED[message["code"]], message["code"], f"{message['code']} {message['msg']}"
    )  # fmt: skip
    assert KEY not in error.fix and SECRET not in error.fix


def _error(code: int) -> StreamError:
    frame = next(f for f in FRAMES if f[0]["code"] == code)
    error = refusal(frame)
    assert error is not None
    return error


def test_what_to_fix_names_the_settings() -> None:
    key_settings = "api_key_env or api_key_file and api_secret_env or api_secret_file"
    assert key_settings in _error(402).fix
    # 409: the plan lacks the feed: switch the feed or use a key whose plan has it.
    assert '"sip"' in _error(409).fix and "feed" in _error(409).fix
    assert key_settings in _error(409).fix
    assert "live = false" in _error(405).fix
    assert "another" in _error(406).fix and key_settings in _error(406).fix
    for code in (400, 401, 410):
        assert "bug" in _error(code).fix


@pytest.mark.parametrize(
    "message",
    [{"T": "error", "code": 408, "msg": "something new"},
     {"T": "error", "code": "406", "msg": "connection limit exceeded"},
     {"T": "error", "code": True, "msg": "x"},
     {"T": "error", "code": [402], "msg": "x"},
     {"T": "error"}],
)  # fmt: skip
def test_an_unknown_code_reconnects_as_usual(message: dict[str, Any]) -> None:
    # Only the documented integer codes are trusted to mean what the table says.
    error = refusal([message])
    assert error is not None and error.fault is StreamFault.VENUE_FAULT


def test_the_gravest_error_of_a_frame_decides() -> None:
    frame = [{"T": "error", "code": 407, "msg": "slow client"},
             {"T": "error", "code": 402, "msg": "auth failed"}]  # fmt: skip
    error = refusal(frame)
    assert error is not None and (error.fault, error.code) == (StreamFault.KEY_REFUSED, 402)


def test_the_venue_words_are_bounded() -> None:
    frame = [{"T": "error", "code": 500, "msg": "x" * 10_000}]
    error = refusal(frame)
    assert error is not None and len(error.said) < 300


def test_authenticated_is_the_login_answer() -> None:
    session = SIP.session()
    assert not session.logged_in
    assert session.receive((FIXTURES / "stream_authenticated.json").read_text()) == [LoggedIn()]
    assert session.logged_in
    for name in ("stream_connected.json", "stream_subscription.json", "stream_bar.json"):
        session = SIP.session()
        assert LoggedIn() not in session.receive((FIXTURES / name).read_text())
        assert not session.logged_in
    for name in ("stream_connected.json", "stream_authenticated.json", "stream_bar.json"):
        assert refusal((FIXTURES / name).read_text()) is None


def test_the_subscription_answer_confirms_the_subscribe() -> None:
    # It carries no id to match (nothing is awaited), but says the subscribe
    # went through: the collector's proof that nothing refused it.
    assert received((FIXTURES / "stream_subscription.json").read_text()) == [Subscribed()]
    for name in ("stream_connected.json", "stream_authenticated.json", "stream_bar.json"):
        assert Subscribed() not in received((FIXTURES / name).read_text())


# --- the simulator sends each code ----------------------------------------------


_URLS: dict[int, str] = {}  # id(sim) -> its ws:// base


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    scenario = parse_scenario({"seed": 3, "symbols": [
        {"symbol": s, "listed": "-3d"} for s in SYMBOLS]}, clock.now())  # fmt: skip
    exchange = SimExchange(scenario, protocol="alpaca")
    host, port = await exchange.start("127.0.0.1", 0)
    _URLS[id(exchange)] = f"ws://{host}:{port}"
    try:
        yield exchange
    finally:
        await exchange.stop()
        del _URLS[id(exchange)]


def personality(sim: SimExchange) -> AlpacaPersonality:
    assert isinstance(sim.personality, AlpacaPersonality)
    return sim.personality


def address(sim: SimExchange) -> str:
    return _URLS[id(sim)]


async def receive(ws: ClientConnection, within: float = 5) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        message = json.loads(await ws.recv())
    assert isinstance(message, list)
    return message


async def open_stream(sim: SimExchange, feed: str = "iex") -> ClientConnection:
    ws = await connect(f"{address(sim)}/v2/{feed}")
    assert await receive(ws) == [{"T": "success", "msg": "connected"}]
    return ws


async def log_in(ws: ClientConnection) -> list[dict[str, Any]]:
    await ws.send(json.dumps({"action": "auth", "key": SIM_KEY, "secret": SIM_SECRET}))
    return await receive(ws)


def error(code: int) -> list[dict[str, Any]]:
    return next(frame for frame in FRAMES if frame[0]["code"] == code)


async def test_sim_a_feed_outside_the_plan_is_refused_at_login(sim: SimExchange) -> None:
    personality(sim).feeds = {"iex"}
    ws = await open_stream(sim, "sip")
    assert await log_in(ws) == error(409)
    # Not logged in: a subscribe is refused as before any login.
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ0"]}))
    assert await receive(ws) == error(401)
    iex = await open_stream(sim, "iex")
    assert await log_in(iex) == [{"T": "success", "msg": "authenticated"}]
    await ws.close()
    await iex.close()


async def test_sim_one_connection_per_key_and_feed(sim: SimExchange) -> None:
    first = await open_stream(sim, "iex")
    assert await log_in(first) == [{"T": "success", "msg": "authenticated"}]
    # The limit is per endpoint ("connections to a single endpoint"): sip is free.
    other_feed = await open_stream(sim, "sip")
    assert await log_in(other_feed) == [{"T": "success", "msg": "authenticated"}]
    second = await open_stream(sim, "iex")
    assert await log_in(second) == error(406)
    await second.wait_closed()
    await first.close()
    await first.wait_closed()
    # Once the first is gone its slot is free again.
    async with asyncio.timeout(5):
        while (SIM_KEY, "iex") in personality(sim).authenticated:
            await asyncio.sleep(0.01)
    third = await open_stream(sim, "iex")
    assert await log_in(third) == [{"T": "success", "msg": "authenticated"}]
    await third.close()
    await other_feed.close()


async def test_sim_a_subscription_past_the_symbol_limit_changes_nothing(sim: SimExchange) -> None:
    personality(sim).symbol_limit = 2
    ws = await open_stream(sim)
    await log_in(ws)
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ0"], "updatedBars": ["EQ0"]}))
    (answer,) = await receive(ws)
    assert answer["bars"] == ["EQ0"]
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ1", "EQ2"]}))
    assert await receive(ws) == error(405)
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ1"]}))
    (answer,) = await receive(ws)
    assert answer["bars"] == ["EQ0", "EQ1"]  # the refused request changed nothing
    await ws.close()


async def test_sim_a_channel_of_another_stream_is_an_invalid_action(sim: SimExchange) -> None:
    ws = await open_stream(sim)
    await log_in(ws)
    await ws.send(json.dumps({"action": "subscribe", "orderbooks": ["EQ0"]}))
    assert await receive(ws) == error(410)
    await ws.close()


async def test_sim_slow_client_is_told_and_dropped_internal_error_only_told(
    sim: SimExchange,
) -> None:
    ws = await open_stream(sim)
    await log_in(ws)
    assert await personality(sim).fault_streams(500) == 1
    assert await receive(ws) == error(500)
    await ws.send(json.dumps({"action": "subscribe", "bars": ["EQ0"]}))
    assert (await receive(ws))[0]["T"] == "subscription"  # still open
    assert await personality(sim).fault_streams(407) == 1
    assert await receive(ws) == error(407)
    await ws.wait_closed()
    # A connection that has not logged in is told nothing.
    quiet = await open_stream(sim)
    assert await personality(sim).fault_streams(500) == 0
    await quiet.close()


# --- the collector against the simulator, over real sockets --------------------

VENUE = "us-equities"
KEY_SOURCE = (
    'api_key_env = "CANDLED_TEST_ALPACA_KEY", api_secret_env = "CANDLED_TEST_ALPACA_SECRET"'
)
# Normal reconnects at once; the long pauses short enough to see two of them.
SETTINGS = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "auth_retry_s": 1.0,
            "busy_retry_s": 0.4, "busy_retry_cap_s": 1.6, "key_source": KEY_SOURCE}  # fmt: skip
# When only the usual reconnect is expected: the long pauses out of reach.
NO_PAUSE = {**SETTINGS, "auth_retry_s": 60.0, "busy_retry_s": 60.0, "busy_retry_cap_s": 60.0}


def alpaca(secret: str = SIM_SECRET, feed: str = "iex") -> AlpacaStream:
    codec = get_codec("alpaca", VENUE, Credentials(SIM_KEY, secret), {"feed": feed})
    assert isinstance(codec, AlpacaCodec)
    return codec.stream


class UnauthenticatedSession(AlpacaSession):
    """A bug: subscribes without logging in (401)."""

    LOGIN = False

    def login(self) -> list[str]:
        return []


class GarbledSession(AlpacaSession):
    """A bug: a subscribe message that is not JSON (400)."""

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        return "{not json"


class WrongChannelSession(AlpacaSession):
    """A bug: subscribes a channel of another stream (410)."""

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        return json.dumps({"action": "subscribe", "orderbooks": [s.symbol for s in keys]})


class TwiceSession(AlpacaSession):
    """A bug: logs in twice (403)."""

    def login(self) -> list[str]:
        return super().login() * 2


def buggy(session: type[AlpacaSession]) -> AlpacaStream:
    """The stream of an Alpaca venue whose sessions have `session`'s bug."""

    class Buggy(AlpacaStream):
        SESSION = session

    return Buggy(VENUE, "iex", Credentials(SIM_KEY, SIM_SECRET))


class Connections:
    """When the simulator accepted each stream connection (polled every 5 ms)."""

    def __init__(self, sim: SimExchange) -> None:
        self._sim = sim
        self._before = sim.counters.ws_connections  # others' connections
        self.at: list[float] = []

    def sample(self) -> None:
        while len(self.at) < self._sim.counters.ws_connections - self._before:
            self.at.append(time.monotonic())

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.at)]


class Run:
    """A collector of the AAPL-like series EQ0 and EQ1 against the simulator."""

    def __init__(self, sim: SimExchange, codec: StreamCodec, **settings: Any) -> None:
        self.connections = Connections(sim)
        self.connects = 0  # on_connect calls
        self.candles: list[Candle] = []
        series = [SeriesKey(VENUE, s, "1m") for s in SYMBOLS[:2]]
        self.collector = Collector(codec, address(sim), series, self._sink, self._on_connect,
                                   CollectorSettings(**{**SETTINGS, **settings}))  # fmt: skip

    async def _sink(self, candles: Sequence[Candle]) -> None:
        self.candles.extend(candles)

    async def _on_connect(self, series: Sequence[SeriesKey]) -> None:
        self.connects += 1

    async def __aenter__(self) -> Run:
        self._task = asyncio.create_task(self.collector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def until(self, done: Callable[[], bool], limit_s: float = 15) -> None:
        """Wait until `done()`, polled every 5 ms while the collector runs."""
        async with asyncio.timeout(limit_s):
            while True:
                self.connections.sample()
                if self._task.done():
                    self._task.result()  # the collector's own error
                    raise AssertionError("the collector stopped")
                if done():
                    return
                await asyncio.sleep(0.005)


def events(logs: Sequence[MutableMapping[str, Any]], level: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["log_level"] == level]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("case", "code"), [("wrong secret", 402), ("feed outside the plan", 409),
                       ("more symbols than the plan", 405)],
)  # fmt: skip
async def test_a_refused_key_or_plan_fails_loudly_and_is_asked_again_only_after_the_pause(
    sim: SimExchange, case: str, code: int
) -> None:
    codec = alpaca()
    if code == 402:
        codec = alpaca(secret="candled-test-wrong-secret")
    elif code == 409:
        personality(sim).feeds = {"iex"}
        codec = alpaca(feed="sip")
    else:
        personality(sim).symbol_limit = 1
    with capture_logs() as logs:
        async with Run(sim, codec) as run:
            await run.until(lambda: len(run.connections.at) >= 3)
    # Each connection came a whole pause after the one before: no loop.
    assert all(gap >= 0.9 for gap in run.connections.gaps), run.connections.gaps
    refusal = run.collector.refusal
    assert refusal is not None and f"{code} " in refusal and f'"{VENUE}"' in refusal
    assert KEY_SOURCE in refusal  # the variables that hold the key
    said = [e for e in events(logs, "error") if e.get("retry_in_s") == 1.0]
    assert len(said) >= 2 and all(e["venue"] == VENUE and KEY_SOURCE in e["error"] for e in said)
    assert "candled-test-wrong-secret" not in json.dumps(logs)
    if code != 405:  # refused at login: never counted connected, nothing caught up
        assert run.connects == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("codec", "code"), [(buggy(GarbledSession), 400), (buggy(UnauthenticatedSession), 401),
                        (buggy(WrongChannelSession), 410)],
)  # fmt: skip
async def test_a_message_alpaca_rejects_is_a_bug_said_loudly_and_retried_only_after_the_pause(
    sim: SimExchange, codec: AlpacaStream, code: int
) -> None:
    # The subscription was refused: the connection would carry nothing for ever
    # (a quiet stream has no idle timeout).
    with capture_logs() as logs:
        async with Run(sim, codec) as run:
            await run.until(lambda: len(run.connections.at) >= 3)
    assert all(gap >= 0.9 for gap in run.connections.gaps), run.connections.gaps
    refusal = run.collector.refusal
    assert refusal is not None and f"{code} " in refusal and "bug" in refusal
    assert any(e["venue"] == VENUE and "bug" in e["error"] for e in events(logs, "error"))


@pytest.mark.timeout(30)
async def test_another_connection_on_the_key_backs_off_long_and_is_said(
    sim: SimExchange,
) -> None:
    held = await open_stream(sim)
    assert await log_in(held) == [{"T": "success", "msg": "authenticated"}]
    with capture_logs() as logs:
        async with Run(sim, alpaca()) as run:
            await run.until(lambda: len(run.connections.at) >= 4)
            gaps = run.connections.gaps
            # 0.4 s, then twice as long each time (capped at 1.6 s): not the usual 0-0.2 s.
            assert gaps[0] >= 0.35 and gaps[1] >= 0.75 and gaps[2] >= 1.5, gaps
            refusal = run.collector.refusal
            assert refusal is not None and "406 connection limit exceeded" in refusal
            assert "another connection" in refusal and KEY_SOURCE in refusal
            assert run.collector.reconnects["connection_limit"] >= 3 and run.connects == 0
            # The other connection ends: the collector gets the key's connection.
            await held.close()
            await run.until(lambda: run.collector.connected and run.collector.refusal is None)
    assert any("another connection" in e["error"] for e in events(logs, "error"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [407, 500])
async def test_slow_client_and_internal_error_reconnect_as_usual(
    sim: SimExchange, code: int
) -> None:
    async with Run(sim, alpaca(), **NO_PAUSE) as run:
        await run.until(lambda: run.collector.connected)
        assert await personality(sim).fault_streams(code) == 1
        # 500 leaves the connection open: the collector drops it itself.
        await run.until(lambda: run.connects >= 2 and run.collector.connected, limit_s=10)
        assert run.collector.refusal is None
        assert run.collector.reconnects["venue_fault"] == 1


@pytest.mark.timeout(30)
async def test_logging_in_twice_changes_nothing() -> None:
    # A minute closes two seconds in: its bars arrive on the same connection.
    scenario = parse_scenario({"seed": 3, "symbols": [
        {"symbol": s, "listed": "-3d"} for s in SYMBOLS]}, clock.now())  # fmt: skip
    now = clock.now()
    offset = now.replace(second=58, microsecond=0) - now
    exchange = SimExchange(scenario, clock=lambda: clock.now() + offset, protocol="alpaca")
    host, port = await exchange.start("127.0.0.1", 0)
    _URLS[id(exchange)] = f"ws://{host}:{port}"
    try:
        with capture_logs() as logs:
            async with Run(exchange, buggy(TwiceSession)) as run:
                await run.until(lambda: len(run.candles) >= 2, limit_s=10)
    finally:
        await exchange.stop()
    assert exchange.counters.ws_connections == 1 and not run.collector.reconnects
    assert any("403 already authenticated" in e.get("error", "") for e in events(logs, "error"))


# --- /health and where the key comes from ----------------------------------------


def test_health_shows_why_the_stream_is_down() -> None:
    why = 'venue "us-equities" stream error 406 connection limit exceeded: another connection ...'
    facts = HealthFacts(
        uptime_s=1.0, database_ok=True, database_error=None, timescaledb=None, license=None,
        config_loaded_at=clock.now(), last_reload="ok",
        venues=[VenueHealth(VENUE, False, 200, None, "running", stream_refused=why)],
        series=[], crash_looping=[],
    )  # fmt: skip
    doc = assess(facts)
    assert doc["status"] == "degraded" and why in doc["reasons"]
    assert doc["venues"][0]["stream_refused"] == why


def test_the_key_source_names_the_settings_never_the_key() -> None:
    venue = VenueConfig(
        name=VENUE, kind="alpaca", rest_url="http://x", ws_url="ws://x",
        api_key_env="ALPACA_KEY", api_secret_file="/etc/candled/alpaca-secret",
        credentials=Credentials(KEY, SECRET),
    )  # fmt: skip
    source = key_source(venue)
    assert source == 'api_key_env = "ALPACA_KEY", api_secret_file = "/etc/candled/alpaca-secret"'
    assert KEY not in source and SECRET not in source
