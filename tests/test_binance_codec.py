"""The Binance codec against payloads shaped as Binance documents them.

Sources of the fixture shapes:
- klines rows and error bodies:
  https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#klinecandlestick-data
- kline stream events, combined-stream wrapper, SUBSCRIBE/UNSUBSCRIBE and replies:
  https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
- X-MBX-USED-WEIGHT-1M, Retry-After, 429 and 418:
  https://developers.binance.com/docs/binance-spot-api-docs/rest-api/limits
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from candled.domain import Candle, SeriesKey, Timeframe
from candled.venues import (
    ClosedBars,
    CodecError,
    Foreign,
    Gap,
    Heartbeat,
    Malformed,
    Reply,
    StreamEvent,
    VenueError,
    get_codec,
    known_kinds,
)
from candled.venues.binance import BinanceCodec
from candled.venues.wire import bar_at_ms, bar_open, from_ms, to_ms

FIXTURES = Path(__file__).parent / "fixtures" / "binance"
BTC_1M = SeriesKey("binance", "BTCUSDT", "1m")
T0 = datetime(2024, 1, 1, tzinfo=UTC)  # 1704067200000 ms, the fixtures' first bar
codec = BinanceCodec()
stream = codec.stream
ETH_1S = SeriesKey("binance", "ETHUSDT", "1s")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


# --- history ---------------------------------------------------------------


def test_parse_klines_converts_strings_and_milliseconds() -> None:
    now = T0 + timedelta(minutes=10)  # every fixture bar has closed
    candles = codec.parse_history(BTC_1M, 200, fixture_bytes("klines_btcusdt_1m.json"), now)

    assert [c.ts for c in candles] == [T0 + timedelta(minutes=i) for i in range(3)]
    assert all(c.ts.tzinfo is UTC for c in candles)
    assert candles[0] == Candle(BTC_1M, T0, 42283.58, 42298.62, 42261.02, 42298.61, 35.92724)
    assert candles[2].volume == 0.0  # Binance publishes zero-volume bars


def test_parse_klines_leaves_out_the_bar_still_open() -> None:
    body = fixture_bytes("klines_btcusdt_1m.json")
    # The third bar opens at T0+2m and closes at T0+3m.
    open_now = codec.parse_history(BTC_1M, 200, body, T0 + timedelta(minutes=2, seconds=59))
    at_close = codec.parse_history(BTC_1M, 200, body, T0 + timedelta(minutes=3))

    assert [c.ts for c in open_now] == [T0, T0 + timedelta(minutes=1)]
    assert len(at_close) == 3


def test_parse_empty_array_is_no_data() -> None:
    assert codec.parse_history(BTC_1M, 200, b"[]", T0) == []


def test_error_body_becomes_venue_error() -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, 400, fixture_bytes("error_invalid_symbol.json"), T0)
    assert (info.value.status, info.value.code, info.value.msg) == (400, -1121, "Invalid symbol.")


def test_error_status_without_body_is_venue_error() -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, 502, b"<html>Bad Gateway</html>", T0)
    assert (info.value.status, info.value.code) == (502, None)


def _row(**changes: Any) -> list[Any]:
    row: list[Any] = list(fixture_json("klines_btcusdt_1m.json")[0])
    for index, value in changes.items():
        row[int(index.removeprefix("f"))] = value
    return row


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"code": 0}',  # an object where rows are expected
        json.dumps([[1704067200000, "1", "2"]]).encode(),  # too few fields
        json.dumps([_row(f0="1704067200000")]).encode(),  # open time as a string
        json.dumps([_row(f0=True)]).encode(),
        json.dumps([_row(f0=1704067200001)]).encode(),  # not aligned to 1m
        json.dumps([_row(f1=42283.58)]).encode(),  # price as a number
        json.dumps([_row(f2="abc")]).encode(),
        json.dumps([_row(f4="NaN")]).encode(),
        json.dumps([_row(f5=None)]).encode(),
        json.dumps(["row"]).encode(),
    ],
)
def test_malformed_history_raises_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        codec.parse_history(BTC_1M, 200, body, T0 + timedelta(days=1))


def test_history_request_converts_to_inclusive_milliseconds() -> None:
    request = codec.history_request(BTC_1M, T0, T0 + timedelta(minutes=1000), 1000)

    assert (request.method, request.path, request.weight) == ("GET", "/api/v3/klines", 2)
    assert request.params == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "startTime": "1704067200000",
        "endTime": str(1704067200000 + 1000 * 60_000 - 1),  # endTime is inclusive
        "limit": "1000",
    }


def test_history_request_accepts_other_timezones_as_the_same_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    request = codec.history_request(
        BTC_1M, T0.astimezone(plus_two), T0.astimezone(plus_two) + timedelta(hours=1), 60
    )
    assert request.params["startTime"] == "1704067200000"


@pytest.mark.parametrize("limit", [0, 1001])
def test_history_request_rejects_limits_outside_a_page(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        codec.history_request(BTC_1M, T0, T0 + timedelta(hours=1), limit)


def test_history_request_rejects_naive_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        codec.history_request(BTC_1M, datetime(2024, 1, 1), T0, 10)
    with pytest.raises(ValueError, match="empty window"):
        codec.history_request(BTC_1M, T0, T0, 10)


def test_genesis_request_asks_for_the_first_bar_after_zero() -> None:
    request = codec.genesis_request(SeriesKey("binance", "ETHUSDT", "1s"))
    assert request.params == {"symbol": "ETHUSDT", "interval": "1s", "startTime": "0", "limit": "1"}
    assert codec.limits.exact_genesis


def test_limits_follow_binance_documentation() -> None:
    limits = codec.limits
    assert (limits.page_size, limits.request_weight) == (1000, 2)
    assert not limits.sparse and limits.exact_genesis
    assert not codec.needs_credentials and not codec.needs_secret
    s = stream.limits
    assert (s.streams_per_connection, s.max_connection_age_s, s.max_messages_per_s) == (
        1024, 86_400, 5
    )  # fmt: skip
    assert not stream.quiet and stream.has_stream(BTC_1M) and stream.has_stream(ETH_1S)


def test_timeframes() -> None:
    assert codec.timeframe_supported("1s")
    assert codec.timeframe_supported("1M")
    assert not codec.timeframe_supported("2m")


# --- rate limits -----------------------------------------------------------


def test_rate_facts_read_used_weight_case_insensitively() -> None:
    facts = codec.rate_facts(200, {"X-MBX-USED-WEIGHT-1M": "1234", "Content-Type": "x"})
    assert (facts.used_weight, facts.retry_after_s) == (1234, None)
    assert not facts.rate_limited and not facts.banned
    assert codec.rate_facts(200, {"x-mbx-used-weight-1m": "7"}).used_weight == 7


def test_429_is_rate_limited_with_retry_after() -> None:
    facts = codec.rate_facts(429, {"X-MBX-USED-WEIGHT-1M": "6002", "Retry-After": "17"})
    assert facts.rate_limited and not facts.banned
    assert (facts.used_weight, facts.retry_after_s) == (6002, 17.0)


def test_418_is_a_ban() -> None:
    facts = codec.rate_facts(418, {"Retry-After": "120"})
    assert facts.banned and not facts.rate_limited
    assert facts.retry_after_s == 120.0


@pytest.mark.parametrize("value", ["soon", "-5", "inf", ""])
def test_unreadable_rate_headers_are_unknown(value: str) -> None:
    facts = codec.rate_facts(429, {"Retry-After": value, "X-MBX-USED-WEIGHT-1M": value})
    assert (facts.used_weight, facts.retry_after_s) == (None, None)


# --- streams ---------------------------------------------------------------


def frames(*names: str) -> list[str]:
    return [fixture_bytes(name).decode() for name in names]


def test_stream_names_and_path() -> None:
    series = [BTC_1M, ETH_1S]
    assert stream.stream_name(BTC_1M) == "btcusdt@kline_1m"
    assert stream.connect_path(series) == "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1s"
    assert stream.connect_path([]) == "/stream"
    assert stream.session(series).path == stream.connect_path(series)


def test_streams_beyond_the_path_budget_are_subscribed_by_message() -> None:
    series = [BTC_1M, ETH_1S]
    one = stream.session(series, max_path=len(stream.connect_path(series[:1])))
    assert (one.path, one.streams) == (stream.connect_path(series[:1]), [BTC_1M])
    assert not one.carries(ETH_1S)
    none = stream.session(series, max_path=len(stream.connect_path(series[:1])) - 1)
    assert (none.path, none.streams) == ("/stream", [])
    assert len(stream.session(series).streams) == 2  # no budget: all in the URL


def test_subscribe_and_unsubscribe_messages_carry_ids() -> None:
    session = stream.session()
    assert session.login() == [] and session.logged_in
    (subscribe,) = session.subscribe([BTC_1M, SeriesKey("binance", "ETHUSDT", "1m")])
    assert json.loads(subscribe) == {
        "method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": 1,
    }  # fmt: skip
    # One message per timeframe.
    one_s, unsubscribe = session.subscribe([ETH_1S]), session.unsubscribe([BTC_1M])
    assert [json.loads(m)["id"] for m in one_s + unsubscribe] == [2, 3]
    assert json.loads(unsubscribe[0]) == {
        "method": "UNSUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 3,
    }  # fmt: skip
    assert session.awaiting == {1, 2, 3}


def test_combined_frame_not_closed_is_a_heartbeat() -> None:
    session = stream.session([BTC_1M])
    assert session.receive(*frames("stream_kline_open.json")) == [Heartbeat()]


def test_combined_frame_closed_yields_the_final_candle() -> None:
    session = stream.session([BTC_1M])
    candle = Candle(BTC_1M, T0, 42283.58, 42298.62, 42261.02, 42298.61, 35.92724)
    assert session.receive(*frames("stream_kline_closed.json")) == [
        Gap(BTC_1M, None, T0),  # the stream's first bar
        ClosedBars((candle,)),
    ]


def test_raw_frame_closed_uses_the_codec_venue_name() -> None:
    eu = SeriesKey("binance-eu", "ETHUSDT", "1s")
    session = BinanceCodec("binance-eu").stream.session([eu])
    events = session.receive(*frames("raw_kline_closed_1s.json"))
    (candle,) = bars(events)
    assert candle.series == eu and candle.ts == T0
    assert (candle.open, candle.close, candle.volume) == (2281.87, 2282.01, 3.4152)
    # The stream is named from the event itself: not carried, it is foreign.
    assert stream.session([BTC_1M]).receive(*frames("raw_kline_closed_1s.json")) == [Foreign(1)]


def bars(events: list[StreamEvent]) -> list[Candle]:
    return [c for e in events if isinstance(e, ClosedBars) for c in e.candles]


def test_method_replies() -> None:
    session = stream.session()
    session.subscribe([BTC_1M])
    assert session.receive(*frames("subscribe_reply.json")) == [Reply(1)]
    assert session.awaiting == frozenset()
    (error,) = session.receive(*frames("method_error_reply.json"))
    assert isinstance(error, Reply) and error.request_id == 7
    assert error.error is not None and error.error.startswith("Invalid request")


def test_other_events_are_no_event() -> None:
    trade = {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT"}}
    assert stream.session([BTC_1M]).receive(json.dumps(trade)) == []


def _closed_frame(**changes: Any) -> str:
    frame = fixture_json("stream_kline_closed.json")
    for key, value in changes.items():
        if value is _DELETE:
            del frame["data"]["k"][key]
        else:
            frame["data"]["k"][key] = value
    return json.dumps(frame)


_DELETE = object()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2, 3]",
        '"kline"',
        json.dumps({"stream": "btcusdt@kline_1m"}),  # wrapper without data
        json.dumps({"stream": 5, "data": {}}),
        json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline"}}),  # no k
        json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": []}}),
        _closed_frame(o=_DELETE),
        _closed_frame(t=_DELETE),
        _closed_frame(x=_DELETE),
        _closed_frame(x="true"),
        _closed_frame(t="1704067200000"),
        _closed_frame(t=1704067200500),  # not aligned
        _closed_frame(c=42298.61),
        _closed_frame(h="high"),
        _closed_frame(v=None),
        _closed_frame(i="2m"),
        _closed_frame(s=""),
        json.dumps({"result": None, "id": "one"}),
    ],
)
def test_malformed_frames_are_flagged_not_raised(text: str) -> None:
    session = stream.session([BTC_1M])
    (event,) = session.receive(text)
    assert isinstance(event, Malformed) and event.reason
    assert not session.ready


# --- registry --------------------------------------------------------------


def test_registry() -> None:
    assert "binance" in known_kinds()
    assert get_codec("binance").venue == "binance"
    with pytest.raises(ValueError, match="unknown venue kind 'nope'"):
        get_codec("nope")


@pytest.mark.parametrize("timeframe", ["1s", "1m", "1h", "1d", "1w", "1M"])
def test_bar_at_ms_by_arithmetic_agrees_with_the_general_way(timeframe: str) -> None:
    """Open times are checked on the milliseconds (the stream's hot path): the
    same bars, and the same refusals, as through datetimes."""
    tf = Timeframe.parse(timeframe)
    day, week = 86_400_000, 7 * 86_400_000
    far = to_ms(datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    values: list[object] = [0, 1, 999, 1_000, 60_000, 3 * day, 4 * day, week, -1, True, 1.0]
    values += [1_709_294_400_000 + k * 1_000 for k in range(-3, 4)]  # 2024-03-01 12:00
    values += [far, far - 60_000, far + 60_000, 10**18]

    def general(value: object) -> datetime | str:
        try:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CodecError("not a timestamp")
            return bar_open(tf, from_ms(value))
        except CodecError as e:
            return f"refused: {e}"

    def fast(value: object) -> datetime | str:
        try:
            return bar_at_ms(tf, value)
        except CodecError as e:
            return f"refused: {e}"

    for value in values:
        expected = general(value)
        got = fast(value)
        assert got == expected or (
            isinstance(got, str) and isinstance(expected, str) and got.startswith("refused")
        ), value
