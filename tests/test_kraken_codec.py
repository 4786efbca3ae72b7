"""The Kraken codec against payloads shaped as Kraken documents them.

Sources of the fixture shapes:
- ohlc_xbtusd_1m.json (the documented example answer, rows
  `[time, open, high, low, close, vwap, volume, count]`, the last one unfinished):
  https://docs.kraken.com/api-reference/market-data/get-ohlc-data
- error_unknown_pair.json, error_too_many_requests.json (HTTP 200, `error` array):
  https://docs.kraken.com/exchange/guides/general/errors
- ws_subscribe_request.json, ws_subscribe_ack.json, ws_subscribe_error.json,
  ws_ohlc_snapshot.json (the documented example), ws_ohlc_update.json:
  https://docs.kraken.com/api/docs/websocket-v2/ohlc
- ws_heartbeat.json: https://docs.kraken.com/api/docs/websocket-v2/heartbeat
- ws_status.json (the documented example): https://docs.kraken.com/api/docs/websocket-v2/status
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from candled.domain import Candle, SeriesKey
from candled.venues import (
    ClosedBars,
    CodecError,
    Credentials,
    Foreign,
    Gap,
    Heartbeat,
    Malformed,
    Reply,
    VenueError,
    get_codec,
    known_kinds,
)
from candled.venues.kraken import KrakenCodec

FIXTURES = Path(__file__).parent / "fixtures" / "kraken"
BTC_1M = SeriesKey("kraken", "BTC/USD", "1m")
T0 = datetime(2023, 7, 6, 19, 20, tzinfo=UTC)  # 1688671200, the OHLC example's first row
codec = KrakenCodec()
stream = codec.stream
ALGO_5M = SeriesKey("kraken", "ALGO/USD", "5m")
MATIC_5M = SeriesKey("kraken", "MATIC/USD", "5m")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


# --- history ---------------------------------------------------------------


def test_parse_ohlc_drops_the_unfinished_last_row() -> None:
    now = T0 + timedelta(hours=1)  # every row has closed by our clock ...
    candles = codec.parse_history(BTC_1M, 200, fixture_bytes("ohlc_xbtusd_1m.json"), now)

    # ... but Kraken says the last entry is not committed yet: three bars, not four.
    assert [c.ts for c in candles] == [T0 + timedelta(minutes=i) for i in range(3)]
    assert candles[0] == Candle(BTC_1M, T0, 30306.1, 30306.2, 30305.7, 30305.7, 3.39243896)
    assert candles[2].volume == 2.13024789  # volume is field 6; field 5 is the vwap


def test_parse_ohlc_leaves_out_bars_still_open_by_our_clock() -> None:
    body = fixture_bytes("ohlc_xbtusd_1m.json")
    # The third row opens at T0+2m and closes at T0+3m.
    early = codec.parse_history(BTC_1M, 200, body, T0 + timedelta(minutes=2, seconds=59))
    assert [c.ts for c in early] == [T0, T0 + timedelta(minutes=1)]


def test_rows_come_back_oldest_first_whatever_the_order() -> None:
    payload = fixture_json("ohlc_xbtusd_1m.json")
    rows = payload["result"]["XXBTZUSD"]
    payload["result"]["XXBTZUSD"] = [rows[1], rows[0], rows[2], rows[3]]
    candles = codec.parse_history(BTC_1M, 200, json.dumps(payload).encode(), T0 + timedelta(1))
    assert [c.ts for c in candles] == [T0 + timedelta(minutes=i) for i in range(3)]


def test_the_pair_may_come_back_under_its_display_name() -> None:
    payload = fixture_json("ohlc_xbtusd_1m.json")
    payload["result"] = {"BTC/USD": payload["result"]["XXBTZUSD"], "last": 1688672160}
    candles = codec.parse_history(BTC_1M, 200, json.dumps(payload).encode(), T0 + timedelta(1))
    assert len(candles) == 3


def test_only_the_unfinished_row_is_no_data() -> None:
    body = json.dumps({"error": [], "result": {"XXBTZUSD": [fixture_json(
        "ohlc_xbtusd_1m.json")["result"]["XXBTZUSD"][3]], "last": 1688671320}}).encode()  # fmt: skip
    assert codec.parse_history(BTC_1M, 200, body, T0 + timedelta(1)) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("error_unknown_pair.json", "EQuery:Unknown asset pair"),
        # Rate limiting comes the same way: HTTP 200, an error string.
        ("error_too_many_requests.json", "EGeneral:Too many requests"),
    ],
)
def test_error_array_becomes_venue_error(name: str, message: str) -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, 200, fixture_bytes(name), T0)
    assert (info.value.status, info.value.code, info.value.msg) == (200, None, message)


def test_error_status_becomes_venue_error() -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, 502, b"<html>Bad Gateway</html>", T0)
    assert (info.value.status, info.value.msg) == (502, "HTTP 502")
    with pytest.raises(VenueError, match="EService:Unavailable"):
        codec.parse_history(BTC_1M, 503, b'{"error": ["EService:Unavailable"]}', T0)


def _rows_with(**changes: Any) -> bytes:
    payload = fixture_json("ohlc_xbtusd_1m.json")
    row = payload["result"]["XXBTZUSD"][0]
    for index, value in changes.items():
        row[int(index.removeprefix("f"))] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"result": {"XXBTZUSD": [], "last": 0}}',  # no error array
        b'{"error": [5], "result": {}}',
        b'{"error": [], "result": []}',
        b'{"error": [], "result": {"last": 0}}',  # no pair
        b'{"error": [], "result": {"A": [], "B": [], "last": 0}}',  # two pairs
        b'{"error": [], "result": {"XXBTZUSD": {}, "last": 0}}',
        _rows_with(f0="1688671200"),  # time as a string
        _rows_with(f0=True),
        _rows_with(f0=1688671201),  # not aligned to 1m
        _rows_with(f0=-60),
        _rows_with(f1=30306.1),  # price as a number
        _rows_with(f2="abc"),
        _rows_with(f4="NaN"),
        _rows_with(f6=None),
        json.dumps({"error": [], "result": {"XXBTZUSD": [[1688671200, "1", "1"], []]}}).encode(),
        json.dumps({"error": [], "result": {"XXBTZUSD": ["row", "row"]}}).encode(),
    ],
)
def test_malformed_history_raises_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        codec.parse_history(BTC_1M, 200, body, T0 + timedelta(days=1))


def test_history_request_asks_since_one_second_before_the_window() -> None:
    request = codec.history_request(BTC_1M, T0, T0 + timedelta(minutes=720), 720)

    assert (request.method, request.path, request.weight) == ("GET", "/0/public/OHLC", 1)
    assert request.params == {
        "pair": "BTC/USD",
        "interval": "1",
        "since": str(1688671200 - 1),  # `since` is exclusive
        "assetVersion": "1",
    }
    assert request.headers == {}
    hourly = codec.history_request(SeriesKey("kraken", "ETH/EUR", "4h"), T0, T0 + timedelta(1), 6)
    assert (hourly.params["pair"], hourly.params["interval"]) == ("ETH/EUR", "240")


@pytest.mark.parametrize("limit", [0, 721])
def test_history_request_rejects_limits_outside_a_page(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        codec.history_request(BTC_1M, T0, T0 + timedelta(hours=1), limit)


def test_history_request_rejects_naive_empty_and_unknown_windows() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        codec.history_request(BTC_1M, datetime(2024, 1, 1), T0, 10)
    with pytest.raises(ValueError, match="empty window"):
        codec.history_request(BTC_1M, T0, T0, 10)
    with pytest.raises(ValueError, match="no 3m interval"):
        codec.history_request(SeriesKey("kraken", "BTC/USD", "3m"), T0, T0 + timedelta(1), 10)


def test_no_exact_genesis() -> None:
    assert not codec.limits.exact_genesis
    with pytest.raises(NotImplementedError, match="first bar"):
        codec.genesis_request(BTC_1M)


def test_limits_follow_kraken_documentation() -> None:
    limits = codec.limits
    assert (limits.page_size, limits.request_weight) == (720, 1)
    # 720 entries, the last one unfinished: 719 closed bars reachable.
    assert limits.history_horizon_bars == 719
    assert limits.rate_capacity / limits.rate_period_s == 1.0  # one public request a second
    assert limits.sparse and not limits.exact_genesis and not codec.needs_credentials
    assert stream.limits.streams_per_connection == 100 and not stream.quiet


def test_timeframes() -> None:
    assert all(codec.timeframe_supported(tf) for tf in ("1m", "5m", "15m", "30m", "1h", "4h", "1d"))
    assert not codec.timeframe_supported("1s")
    assert not codec.timeframe_supported("3m")
    assert not codec.timeframe_supported("1w")  # Kraken's weeks need not start on Monday


def test_options_and_credentials() -> None:
    with pytest.raises(ValueError, match="no options"):
        KrakenCodec("kraken", None, {"price": "mid"})
    keyed = get_codec("kraken", "kraken-eu", Credentials("k3y-s3cret"))
    assert keyed.venue == "kraken-eu"
    assert "k3y-s3cret" not in repr(keyed.history_request(BTC_1M, T0, T0 + timedelta(1), 1))


# --- rate limits -----------------------------------------------------------


def test_rate_facts() -> None:
    ok = codec.rate_facts(200, {"Content-Type": "application/json"})
    assert ok == type(ok)(None, None, rate_limited=False, banned=False)
    assert codec.rate_facts(429, {"Retry-After": "5"}).rate_limited


# --- streams ---------------------------------------------------------------


def frame(name: str) -> str:
    return fixture_bytes(name).decode()


def test_stream_names_and_path() -> None:
    assert stream.stream_name(BTC_1M) == "ohlc-1:BTC/USD"
    assert stream.connect_path([BTC_1M]) == stream.connect_path([]) == "/v2"
    session = stream.session([BTC_1M], max_path=10_000)
    assert session.path == "/v2" and session.streams == []  # subscribed by message only
    assert session.login() == [] and session.logged_in


def test_subscribe_message_matches_the_documented_request() -> None:
    session = stream.session()
    (subscribe,) = session.subscribe([ALGO_5M, MATIC_5M])
    assert json.loads(subscribe) == fixture_json("ws_subscribe_request.json")
    (unsubscribe,) = session.unsubscribe([ALGO_5M])
    assert json.loads(unsubscribe) == {
        "method": "unsubscribe",
        "params": {"channel": "ohlc", "symbol": ["ALGO/USD"], "interval": 5},
        "req_id": 2,
    }


def test_one_interval_per_subscribe_message() -> None:
    messages = stream.session().subscribe([BTC_1M, SeriesKey("kraken", "BTC/USD", "5m")])
    assert [json.loads(m)["params"]["interval"] for m in messages] == [1, 5]


def test_a_snapshot_closes_each_bar_but_the_newest() -> None:
    # No closed flag: a bar is final when a later one of its series opens.
    begin = datetime(2023, 10, 4, 15, 25, tzinfo=UTC)
    first = Candle(ALGO_5M, begin, 0.09875, 0.09875, 0.09875, 0.09875, 201.86015)
    session = stream.session()
    session.subscribe([ALGO_5M])
    assert session.receive(frame("ws_ohlc_snapshot.json")) == [
        Gap(ALGO_5M, None, begin),
        ClosedBars((first,)),
    ]


def test_update_frame_and_reversed_order() -> None:
    session = stream.session()
    session.subscribe([MATIC_5M])
    assert session.receive(frame("ws_ohlc_update.json")) == [Heartbeat()]  # still forming
    update = fixture_json("ws_ohlc_update.json")
    update["data"][0]["interval_begin"] = "2023-10-04T16:30:00Z"
    gap, closed = session.receive(json.dumps(update))
    assert gap == Gap(MATIC_5M, None, datetime(2023, 10, 4, 16, 25, tzinfo=UTC))
    assert isinstance(closed, ClosedBars)
    (candle,) = closed.candles
    assert candle.series == MATIC_5M
    assert (candle.ts, candle.close, candle.volume) == (
        datetime(2023, 10, 4, 16, 25, tzinfo=UTC), 0.5627, 30927.68066226,
    )  # fmt: skip
    snapshot = fixture_json("ws_ohlc_snapshot.json")
    snapshot["data"].reverse()
    reordered = stream.session()
    reordered.subscribe([ALGO_5M])
    events = reordered.receive(json.dumps(snapshot))
    assert [c.ts.minute for e in events if isinstance(e, ClosedBars) for c in e.candles] == [25]


def test_subscribe_acks_and_errors_are_replies() -> None:
    session = stream.session()
    session.subscribe([ALGO_5M])
    assert session.awaiting == {1}
    assert session.receive(frame("ws_subscribe_ack.json")) == [Reply(1)]
    assert session.awaiting == frozenset()
    assert session.receive(frame("ws_subscribe_error.json")) == [
        Reply(2, "Currency pair not supported XXX/USD")
    ]
    unreadable = '{"error": "EGeneral:Invalid arguments", "success": false}'
    assert session.receive(unreadable) == [Reply(None, "EGeneral:Invalid arguments")]
    pong = '{"method": "pong", "req_id": 3, "time_in": "x", "time_out": "y"}'
    assert session.receive(pong) == [Reply(3)]


def test_heartbeat_is_life_and_status_is_no_event() -> None:
    session = stream.session()
    assert session.receive(frame("ws_heartbeat.json")) == [Heartbeat()]
    assert session.receive(frame("ws_status.json")) == []


def test_bars_of_pairs_not_subscribed_are_foreign() -> None:
    session = stream.session()
    session.subscribe([MATIC_5M])
    assert session.receive(frame("ws_ohlc_snapshot.json")) == [Foreign(2)]
    assert not session.ready  # no data of ours yet


_DELETE = object()


def _snapshot(**changes: Any) -> str:
    frame = fixture_json("ws_ohlc_snapshot.json")
    for key, value in changes.items():
        if value is _DELETE:
            del frame["data"][0][key]
        else:
            frame["data"][0][key] = value
    return json.dumps(frame)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2]",
        '"ohlc"',
        json.dumps({"channel": "ohlc", "type": "update"}),  # no data
        json.dumps({"channel": "ohlc", "type": "delta", "data": []}),
        json.dumps({"channel": "ohlc", "type": "update", "data": ["bar"]}),
        _snapshot(open=_DELETE),
        _snapshot(interval_begin=_DELETE),
        _snapshot(interval_begin="2023-10-04T15:25:00"),  # no zone
        _snapshot(interval_begin="2023-10-04T15:27:00.000000000Z"),  # not aligned to 5m
        _snapshot(interval_begin="2023-13-04T15:25:00Z"),
        _snapshot(interval_begin=1696433100),
        _snapshot(interval=7),
        _snapshot(interval="5"),
        _snapshot(interval=True),
        _snapshot(symbol=""),
        _snapshot(close="0.09875"),  # v2 numbers are JSON numbers
        _snapshot(volume=None),
        _snapshot(high=True),
        json.dumps({"method": "subscribe", "success": True, "req_id": "one"}),
    ],
)
def test_malformed_frames_are_flagged_not_raised(text: str) -> None:
    session = stream.session()
    session.subscribe([ALGO_5M])
    (event,) = session.receive(text)
    assert isinstance(event, Malformed)


def test_registry() -> None:
    assert "kraken" in known_kinds()
    assert isinstance(get_codec("kraken"), KrakenCodec)
