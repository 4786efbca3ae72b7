"""The Alpaca codec against payloads shaped as Alpaca documents them.

Sources of the fixture shapes:
- stock bars, their errors and page tokens: https://docs.alpaca.markets/reference/stockbars
  and the docs' source, https://github.com/alpacahq/alpaca-docs/blob/master/content/
  api-references/market-data-api/stock-pricing-data/historical.md
  (`multi_bars_docs_example.json` is the "multi symbol bars response" verbatim;
  `bars_aapl_1day.json` holds the OpenAPI example's AAPL bar (next_page_token null)
  and the docs' one; `bars_aapl_1min.json` the "latest multi bars" example's
  minute bars in the multi-symbol answer's shape; `bars_aapl_page.json` the
  "bars response" example's bar and token in that shape);
- `error_invalid_timeframe.json`: https://github.com/alpacahq/Alpaca-API/issues/178;
  403 "forbidden": https://docs.alpaca.markets/docs/market-data-faq; 429:
  https://alpaca.markets/support/usage-limit-api-calls/; X-RateLimit-* headers:
  https://forum.alpaca.markets/t/executing-orders/12029;
- the stream: https://docs.alpaca.markets/docs/real-time-stock-pricing-data and
  .../alpaca-docs/.../stock-pricing-data/realtime.md (control messages, the bar
  example in `stream_bar.json`, the subscription answer verbatim; the trade,
  bar, corrected bar ("u", alpaca-py's `updatedBars`) and daily bar of
  `stream_mixed_frame.json` are the docs' examples, several in one frame as the
  docs say data may arrive).
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
    LoggedIn,
    Malformed,
    Refusal,
    StreamEvent,
    Subscribed,
    VenueError,
    get_codec,
    known_kinds,
)
from candled.venues.alpaca import LIMITS, AlpacaCodec

FIXTURES = Path(__file__).parent / "fixtures" / "alpaca"
KEY, SECRET = "AKTESTKEY0123456789", "s3cr3t-never-shown-anywhere"
codec = AlpacaCodec("alpaca", Credentials(KEY, SECRET))
stream = codec.stream
AAPL_1M = SeriesKey("alpaca", "AAPL", "1m")
AAPL_1D = SeriesKey("alpaca", "AAPL", "1d")
LATER = datetime(2024, 1, 1, tzinfo=UTC)  # every fixture bar has closed


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def text(name: str) -> str:
    return body(name).decode()


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


# --- history ---------------------------------------------------------------


def test_parse_minute_bars() -> None:
    candles = codec.parse_history(AAPL_1M, 200, body("bars_aapl_1min.json"), LATER)
    t = datetime(2022, 4, 11, 16, 59, tzinfo=UTC)
    assert candles == [
        Candle(AAPL_1M, t, 167.035, 167.05, 166.995, 167.005, 1979.0),
        # 17:00 had no trade: no bar (sparse)
        Candle(AAPL_1M, t + timedelta(minutes=2), 166.87, 166.98, 166.81, 166.98, 1765.0),
    ]


def test_daily_bars_labelled_at_new_york_midnight_are_stored_on_the_utc_date() -> None:
    # 05:00Z in winter (EST), 04:00Z in summer (EDT): midnight in New York both times.
    candles = codec.parse_history(AAPL_1D, 200, body("bars_aapl_1day.json"), LATER)
    assert [c.ts for c in candles] == [
        datetime(2022, 2, 28, tzinfo=UTC), datetime(2022, 4, 11, tzinfo=UTC)
    ]  # fmt: skip
    assert candles[0].volume == 90552883.0


def test_a_daily_bar_not_at_new_york_midnight_is_malformed() -> None:
    payload = json.loads(body("bars_aapl_1day.json"))
    payload["bars"]["AAPL"][0]["t"] = "2022-02-28T00:00:00Z"  # 19:00 the day before in NY
    with pytest.raises(CodecError, match="not midnight in New York"):
        codec.parse_history(AAPL_1D, 200, dumps(payload), LATER)


def test_bars_still_open_are_left_out() -> None:
    # The second bar opens at 17:01 and closes at 17:02.
    at = datetime(2022, 4, 11, 17, 1, 59, tzinfo=UTC)
    assert len(codec.parse_history(AAPL_1M, 200, body("bars_aapl_1min.json"), at)) == 1
    # A daily bar closes at the next midnight in New York, not at midnight UTC.
    nyc_evening = datetime(2022, 4, 12, 3, 59, tzinfo=UTC)
    candles = codec.parse_history(AAPL_1D, 200, body("bars_aapl_1day.json"), nyc_evening)
    assert [c.ts.date().isoformat() for c in candles] == ["2022-02-28"]


def test_no_bars_in_the_window() -> None:
    assert codec.parse_history(AAPL_1M, 200, body("bars_empty.json"), LATER) == []
    null_bars = dumps({"bars": None, "next_page_token": None})
    assert codec.parse_history(AAPL_1M, 200, null_bars, LATER) == []


def test_a_next_page_token_is_never_dropped_silently() -> None:
    """The request asks for one bar more than its window holds, so a token
    means Alpaca left bars of the window out: keeping the page would let the
    healer confirm the rest empty."""
    with pytest.raises(CodecError, match="next_page_token"):
        codec.parse_history(SeriesKey("alpaca", "AAPL", "1h"), 200, body("bars_aapl_page.json"),
                            LATER)  # fmt: skip


def test_bars_of_another_symbol_are_malformed() -> None:
    payload = json.loads(body("multi_bars_docs_example.json"))
    payload["next_page_token"] = None
    with pytest.raises(CodecError, match="TSLA"):
        codec.parse_history(AAPL_1D, 200, dumps(payload), LATER)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"next_page_token": None},
        {"bars": [], "next_page_token": None},
        {"bars": {"AAPL": {}}, "next_page_token": None},
        {"bars": {"AAPL": ["bar"]}, "next_page_token": None},
        {"bars": {"AAPL": [{"t": "2022-04-11T16:59:00Z", "o": "1", "h": 1, "l": 1, "c": 1,
                            "v": 1}]}, "next_page_token": None},
        {"bars": {"AAPL": [{"t": "2022-04-11T16:59:30Z", "o": 1, "h": 1, "l": 1, "c": 1,
                            "v": 1}]}, "next_page_token": None},
        {"bars": {"AAPL": [{"t": 1649696340, "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}]},
         "next_page_token": None},
        {"bars": {"AAPL": [{"t": "2022-04-11T16:59:00Z", "o": 1, "h": 1, "l": 1, "c": 1,
                            "v": True}]}, "next_page_token": None},
    ],
)  # fmt: skip
def test_malformed_answers(payload: Any) -> None:
    with pytest.raises(CodecError):
        codec.parse_history(AAPL_1M, 200, dumps(payload), LATER)
    with pytest.raises(CodecError):
        codec.parse_history(AAPL_1M, 200, b"<html>bad gateway</html>", LATER)


@pytest.mark.parametrize(
    ("status", "fixture", "code", "message"),
    [
        (422, "error_invalid_timeframe.json", 42210000, "invalid timeframe"),
        (403, "error_forbidden.json", None, "forbidden"),
        (429, "error_too_many_requests.json", None, "too many requests"),
    ],
)
def test_error_answers(status: int, fixture: str, code: int | None, message: str) -> None:
    with pytest.raises(VenueError) as caught:
        codec.parse_history(AAPL_1M, status, body(fixture), LATER)
    assert (caught.value.status, caught.value.code, caught.value.msg) == (status, code, message)
    with pytest.raises(VenueError, match="no error body"):
        codec.parse_history(AAPL_1M, 502, b"<html>bad gateway</html>", LATER)


# --- requests --------------------------------------------------------------


def test_history_request_asks_for_the_window_inclusive_and_one_bar_more() -> None:
    start = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    request = codec.history_request(AAPL_1M, start, start + timedelta(minutes=390), 9999)
    assert (request.method, request.path) == ("GET", "/v2/stocks/bars")
    assert dict(request.params) == {
        "symbols": "AAPL", "timeframe": "1Min",
        # `end` includes a bar opening on it: the last bar opening before the window's end.
        "start": "2024-03-01T14:30:00Z", "end": "2024-03-01T20:59:00Z",
        "limit": "391", "adjustment": "raw", "feed": "iex", "sort": "asc",
    }  # fmt: skip
    assert dict(request.headers) == {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    # A window not on the grid starts at its first bar.
    odd = codec.history_request(AAPL_1M, start + timedelta(seconds=1), start + timedelta(hours=1),
                                100)  # fmt: skip
    assert odd.params["start"] == "2024-03-01T14:31:00Z"


def test_daily_request_names_new_york_midnights() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    request = codec.history_request(AAPL_1D, start, start + timedelta(days=31), 9999)
    # 1 March is EST (05:00Z), 31 March EDT (04:00Z).
    assert (request.params["timeframe"], request.params["start"], request.params["end"]) == (
        "1Day", "2024-03-01T05:00:00Z", "2024-03-31T04:00:00Z"
    )  # fmt: skip


def test_history_request_refuses_what_it_cannot_ask() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="limit"):
        codec.history_request(AAPL_1M, start, start + timedelta(minutes=5), 10_000)
    with pytest.raises(ValueError, match="more than the limit"):
        codec.history_request(AAPL_1M, start, start + timedelta(minutes=5), 4)
    with pytest.raises(ValueError, match="empty window"):
        codec.history_request(AAPL_1M, start + timedelta(seconds=1), start + timedelta(seconds=30),
                              10)  # fmt: skip
    with pytest.raises(ValueError, match="no 4h bars"):
        codec.history_request(SeriesKey("alpaca", "AAPL", "4h"), start, start + timedelta(1), 10)
    with pytest.raises(NotImplementedError):
        codec.genesis_request(AAPL_1M)


def test_timeframes() -> None:
    served = [tf for tf in ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1w",
                            "1M") if codec.timeframe_supported(tf)]  # fmt: skip
    assert served == ["1m", "3m", "5m", "15m", "30m", "1h", "1d"]


def test_credentials_never_show() -> None:
    request = codec.history_request(AAPL_1M, LATER, LATER + timedelta(minutes=1), 1)
    shown_as = (repr(codec), repr(stream), repr(request), str(request), repr(request.headers))
    for shown in shown_as:
        assert SECRET not in shown and KEY not in shown


def test_options() -> None:
    sip = AlpacaCodec("us", Credentials(KEY, SECRET), {"feed": "sip"})
    assert sip.stream.session([AAPL_1M]).path == "/v2/sip"
    assert sip.history_request(AAPL_1M, LATER, LATER + timedelta(minutes=1), 1).params["feed"] == (
        "sip"
    )
    assert stream.connect_path([]) == "/v2/iex"  # the free plan's feed by default
    with pytest.raises(ValueError, match="feed"):
        AlpacaCodec("alpaca", Credentials(KEY, SECRET), {"feed": "otc"})
    with pytest.raises(ValueError, match="only the option feed"):
        AlpacaCodec("alpaca", Credentials(KEY, SECRET), {"price": "M"})
    with pytest.raises(ValueError, match="api_secret_env or api_secret_file"):
        AlpacaCodec("alpaca", Credentials(KEY))


def test_rate_facts() -> None:
    headers = {"X-Ratelimit-Limit": "200", "X-Ratelimit-Remaining": "195",
               "X-Ratelimit-Reset": "1679411617"}  # fmt: skip
    assert codec.rate_facts(200, headers).used_weight == 5
    over = codec.rate_facts(429, {**headers, "X-Ratelimit-Remaining": "0", "Retry-After": "3"})
    assert (over.rate_limited, over.used_weight, over.retry_after_s, over.banned) == (
        True, 200, 3.0, False
    )  # fmt: skip
    assert codec.rate_facts(200, {}).used_weight is None


def test_limits() -> None:
    assert "alpaca" in known_kinds()
    assert get_codec("alpaca").limits is LIMITS
    assert (LIMITS.page_size, LIMITS.rate_capacity, LIMITS.rate_period_s) == (9999, 200, 60.0)
    assert LIMITS.sparse and not LIMITS.exact_genesis and LIMITS.history_horizon_bars is None
    assert codec.needs_credentials and codec.needs_secret
    # One connection per key, never rotated; a quiet stream of minute bars only.
    assert stream.limits.max_connection_age_s == float("inf") and stream.quiet
    assert stream.has_stream(AAPL_1M) and not stream.has_stream(AAPL_1D)


# --- stream ----------------------------------------------------------------

SPY_1M = SeriesKey("alpaca", "SPY", "1m")


def session_of(*keys: SeriesKey) -> Any:
    """A session past its login, carrying `keys`."""
    session = stream.session()
    session.login()
    session.receive(text("stream_authenticated.json"))
    session.subscribe(keys)
    return session


def bars(events: list[StreamEvent]) -> list[Candle]:
    return [c for e in events if isinstance(e, ClosedBars) for c in e.candles]


def test_login_and_subscribe_messages() -> None:
    session = stream.session([AAPL_1M], max_path=10_000)
    assert session.path == "/v2/iex" and session.streams == []  # subscribed by message only
    assert not session.logged_in
    assert [json.loads(m) for m in session.login()] == [
        {"action": "auth", "key": KEY, "secret": SECRET}
    ]
    assert session.receive(text("stream_authenticated.json")) == [LoggedIn()]
    assert session.logged_in
    assert [json.loads(m) for m in session.subscribe([AAPL_1M, SPY_1M])] == [{
        "action": "subscribe", "bars": ["AAPL", "SPY"], "updatedBars": ["AAPL", "SPY"]
    }]  # fmt: skip
    assert [json.loads(m) for m in session.unsubscribe([SPY_1M])] == [{
        "action": "unsubscribe", "bars": ["SPY"], "updatedBars": ["SPY"]
    }]  # fmt: skip
    # Minute bars are all the stream has: other timeframes subscribe nothing.
    assert [json.loads(m) for m in session.subscribe([SeriesKey("alpaca", "AAPL", "15m")])] == [
        {"action": "subscribe", "bars": [], "updatedBars": []}
    ]  # fmt: skip
    assert stream.stream_name(AAPL_1M) != stream.stream_name(SeriesKey("alpaca", "AAPL", "15m"))
    # No ids to match: nothing is awaited, the subscription answer confirms.
    assert session.awaiting == frozenset()
    assert session.receive(text("stream_subscription.json")) == [Subscribed()]
    with pytest.raises(ValueError, match="api key and secret"):
        AlpacaCodec().stream.session().login()


def test_documented_bar_is_a_closed_minute_bar() -> None:
    ts = datetime(2021, 2, 22, 19, 15, tzinfo=UTC)
    assert session_of(SPY_1M).receive(text("stream_bar.json")) == [
        Gap(SPY_1M, None, ts),
        ClosedBars((Candle(SPY_1M, ts, 388.985, 389.13, 388.975, 389.12, 49378.0),)),
    ]


def test_frame_with_bars_corrected_bars_and_others() -> None:
    events = session_of(SPY_1M).receive(text("stream_mixed_frame.json"))
    # The trade and the daily bar are not ours; the corrected 19:14 bar is.
    assert [(c.series.symbol, c.ts.minute, c.volume) for c in bars(events)] == [
        ("SPY", 15, 49378.0), ("SPY", 14, 49478.0)
    ]  # fmt: skip
    assert not any(isinstance(e, Malformed) for e in events)
    # Bars of symbols not subscribed: foreign.
    assert session_of(AAPL_1M).receive(text("stream_mixed_frame.json")) == [Foreign(2)]


@pytest.mark.parametrize(
    ("fixture", "events"),
    [("stream_connected.json", []), ("stream_subscription.json", [Subscribed()])],
)
def test_control_messages_carry_no_data(fixture: str, events: list[StreamEvent]) -> None:
    session = session_of(SPY_1M)
    assert session.receive(text(fixture)) == events
    assert not session.ready


def test_errors_are_refusals() -> None:
    (refusal,) = stream.session().receive(text("stream_auth_failed.json"))
    assert isinstance(refusal, Refusal) and refusal.error.said == "402 auth failed"


@pytest.mark.parametrize(
    "frame",
    ['{"T": "b"}', "not json", '[{"S": "SPY"}]', "[1]",
     '[{"T": "b", "S": "SPY", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "t": "yesterday"}]',
     '[{"T": "b", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "t": "2021-02-22T19:15:00Z"}]'],
)  # fmt: skip
def test_malformed_frames_are_flagged(frame: str) -> None:
    (event,) = session_of(SPY_1M).receive(frame)
    assert isinstance(event, Malformed)


def test_a_malformed_bar_does_not_cost_the_frame_its_good_bars() -> None:
    good = json.loads(text("stream_bar.json"))[0]
    frame = json.dumps([good, {**good, "S": "QQQ", "c": "389.12"}])
    events = session_of(SPY_1M).receive(frame)
    assert isinstance(events[-1], Malformed) and [c.series.symbol for c in bars(events)] == ["SPY"]
