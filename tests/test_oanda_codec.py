"""The OANDA v20 codec against payloads shaped as OANDA documents them.

Sources of the fixture shapes:
- candles_eur_usd_m1.json (`{"instrument", "granularity", "candles": [Candlestick]}`
  with `mid` prices, a sparse gap at 15:18 and the forming candle last):
  https://developer.oanda.com/rest-live-v20/instrument-ep/ and the
  Candlestick / CandlestickData definitions at
  https://developer.oanda.com/rest-live-v20/instrument-df/
- candles_de30_eur_m5.json: the example answer of the candles endpoint in
  https://oanda-api-v20.readthedocs.io/en/stable/endpoints/instruments/instrumentlist.html
- candles_eur_usd_h1_ba.json (`price=BA`: `bid` and `ask` objects, no `mid`):
  https://developer.oanda.com/rest-live-v20/instrument-df/ ("Only provided if
  bid-based candles were requested")
- error_invalid_instrument.json, error_unauthorized.json (`{"errorMessage": ...}`):
  https://developer.oanda.com/rest-live-v20/troubleshooting-errors/
- error_count_exceeded.json: https://github.com/happydasch/btoandav20/issues/28
- error_to_in_future.json: https://github.com/hootnot/oanda-api-v20/issues/144
- candles_eur_usd_m1_unsettled.json: the answer to a poll a few seconds after
  01:10 at a quiet hour: 01:09 has closed but no price after its end has come
  yet, so it is still `complete: false` ("the last closed/complete candle is
  received with the delay anything between 1 sec up to the ~45 secs",
  https://github.com/hootnot/oanda-api-v20/issues/155)
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from candled.config import ConfigError, default_poll_delay, parse_config
from candled.domain import Candle, SeriesKey
from candled.venues import CodecError, Credentials, VenueError, get_codec, known_kinds
from candled.venues.base import HistoryPage
from candled.venues.oanda import OandaCodec

FIXTURES = Path(__file__).parent / "fixtures" / "oanda"
TOKEN = "0123456789abcdef-secret-fedcba9876543210"
EUR_1M = SeriesKey("oanda", "EUR_USD", "1m")
EUR_1H = SeriesKey("oanda", "EUR_USD", "1h")
T0 = datetime(2016, 10, 17, 15, 16, tzinfo=UTC)  # the M1 fixture's first candle
LATER = datetime(2030, 1, 1, tzinfo=UTC)  # every fixture candle has closed
codec = OandaCodec(credentials=Credentials(TOKEN))


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


# --- history answers -------------------------------------------------------


def test_parse_candles_keeps_complete_mid_candles_only() -> None:
    candles = codec.parse_history(EUR_1M, 200, fixture_bytes("candles_eur_usd_m1.json"), LATER)

    # 15:18 had no price (no candle: sparse); 15:20 is not complete yet.
    assert [c.ts for c in candles] == [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)]
    assert all(c.ts.tzinfo is UTC for c in candles)
    assert candles[0] == Candle(EUR_1M, T0, 1.09812, 1.09822, 1.09808, 1.09818, 12.0)


# --- candles that are not complete yet ------------------------------------


QUIET = datetime(2019, 12, 26, 1, 8, tzinfo=UTC)  # the unsettled fixture's first candle


def page(
    name: str, now: datetime, series: SeriesKey = EUR_1M, start: datetime = QUIET
) -> HistoryPage:
    request = codec.history_request(series, start, start + timedelta(hours=1), 5000)
    return codec.parse_history_page(series, request, 200, fixture_bytes(name), now)


def test_a_closed_candle_not_complete_yet_is_not_final_never_no_bar() -> None:
    """Polled at 01:10:03: 01:09 has closed, but OANDA has not completed it.
    The answer is final up to 01:09 and "not yet" from there: no candle of it
    (its values may still change), and no sign that 01:09 had no price."""
    now = QUIET + timedelta(minutes=2, seconds=3)
    got = page("candles_eur_usd_m1_unsettled.json", now)
    assert [c.ts for c in got.candles] == [QUIET]
    assert got.not_final == QUIET + timedelta(minutes=1)
    assert got.next is None
    # The plain parse drops it, as it always did: the page is what says why.
    assert codec.parse_history(EUR_1M, 200, fixture_bytes("candles_eur_usd_m1_unsettled.json"),
                               now) == got.candles  # fmt: skip


def test_an_answer_with_only_an_unfinished_candle_is_not_empty() -> None:
    payload = fixture_json("candles_eur_usd_m1_unsettled.json")
    del payload["candles"][0]
    request = codec.history_request(EUR_1M, QUIET + timedelta(minutes=1), QUIET + timedelta(
        minutes=2), 5000)  # fmt: skip
    got = codec.parse_history_page(EUR_1M, request, 200, json.dumps(payload).encode(),
                                   QUIET + timedelta(minutes=2, seconds=2))  # fmt: skip
    assert got.candles == [] and got.not_final == QUIET + timedelta(minutes=1)


def test_the_candle_in_progress_is_no_concern_of_the_answer() -> None:
    """A candle still open at `now` is left out (complete or not) and makes
    nothing unfinished: the window of a request never holds it."""
    now = QUIET + timedelta(minutes=1, seconds=30)  # 01:09 is in progress
    got = page("candles_eur_usd_m1_unsettled.json", now)
    assert [c.ts for c in got.candles] == [QUIET] and got.not_final is None


def test_documented_answer_final_up_to_its_incomplete_last_candle() -> None:
    got = page("candles_eur_usd_m1.json", LATER, start=T0)
    assert [c.ts for c in got.candles] == [T0, T0 + timedelta(minutes=1),
                                           T0 + timedelta(minutes=3)]  # fmt: skip
    assert got.not_final == T0 + timedelta(minutes=4)  # 15:18 had no price: final, no bar


def test_the_first_unfinished_candle_marks_the_answer_whatever_the_order() -> None:
    payload = fixture_json("candles_eur_usd_m1_unsettled.json")
    payload["candles"][0]["complete"] = False
    payload["candles"].reverse()
    request = codec.history_request(EUR_1M, QUIET, QUIET + timedelta(hours=1), 5000)
    got = codec.parse_history_page(EUR_1M, request, 200, json.dumps(payload).encode(), LATER)
    assert got.candles == [] and got.not_final == QUIET


def test_complete_answers_are_final() -> None:
    got = page("candles_de30_eur_m5.json", LATER, SeriesKey("oanda", "DE30_EUR", "5m"),
               datetime(2016, 10, 17, 19, 35, tzinfo=UTC))  # fmt: skip
    assert len(got.candles) == 4 and got.not_final is None


def test_a_to_in_the_future_is_not_yet_for_the_whole_window() -> None:
    """OANDA's clock behind ours: the window is not final for OANDA yet. Not a
    definite error (which would drop the window until the heal cycle)."""
    start = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)
    request = codec.history_request(EUR_1M, start, start + timedelta(minutes=3), 5000)
    body = fixture_bytes("error_to_in_future.json")
    got = codec.parse_history_page(EUR_1M, request, 400, body, LATER)
    assert got.candles == [] and got.not_final == start
    # Other 400s stay errors.
    with pytest.raises(VenueError):
        codec.parse_history_page(EUR_1M, request, 400, fixture_bytes("error_count_exceeded.json"),
                                 LATER)  # fmt: skip


def test_parse_the_documented_example() -> None:
    series = SeriesKey("oanda", "DE30_EUR", "5m")
    candles = codec.parse_history(series, 200, fixture_bytes("candles_de30_eur_m5.json"), LATER)

    first = datetime(2016, 10, 17, 19, 35, tzinfo=UTC)
    assert [c.ts for c in candles] == [first + timedelta(minutes=5 * i) for i in range(4)]
    assert candles[0] == Candle(series, first, 10503.8, 10508.0, 10503.8, 10506.0, 132.0)


def test_a_candle_ending_after_now_is_left_out_even_if_flagged_complete() -> None:
    body = fixture_bytes("candles_eur_usd_m1.json")
    candles = codec.parse_history(EUR_1M, 200, body, T0 + timedelta(minutes=1, seconds=59))
    assert [c.ts for c in candles] == [T0]


def test_candles_come_back_oldest_first_whatever_the_order() -> None:
    payload = fixture_json("candles_eur_usd_m1.json")
    payload["candles"].reverse()
    candles = codec.parse_history(EUR_1M, 200, json.dumps(payload).encode(), LATER)
    assert [c.ts for c in candles] == sorted(c.ts for c in candles)
    assert len(candles) == 3


def test_no_candles_is_no_data() -> None:
    body = b'{"instrument": "EUR_USD", "granularity": "M1", "candles": []}'
    assert codec.parse_history(EUR_1M, 200, body, LATER) == []


@pytest.mark.parametrize(("price", "field"), [("B", "bid"), ("A", "ask")])
def test_bid_or_ask_candles_by_option(price: str, field: str) -> None:
    body = fixture_bytes("candles_eur_usd_h1_ba.json")
    candles = OandaCodec(options={"price": price}).parse_history(EUR_1H, 200, body, LATER)

    quote = fixture_json("candles_eur_usd_h1_ba.json")["candles"][0][field]
    first = candles[0]
    assert (first.open, first.high, first.low, first.close) == tuple(
        float(quote[k]) for k in ("o", "h", "l", "c")
    )
    assert first.volume == 481.0 and len(candles) == 2


def test_mid_codec_refuses_an_answer_without_mid_prices() -> None:
    with pytest.raises(CodecError, match="mid"):
        codec.parse_history(EUR_1H, 200, fixture_bytes("candles_eur_usd_h1_ba.json"), LATER)


# --- error answers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "message"),
    [
        (400, "error_invalid_instrument.json", "Invalid value specified for 'instrument'"),
        (401, "error_unauthorized.json", "Insufficient authorization to perform request."),
        (400, "error_count_exceeded.json", "Maximum value for 'count' exceeded"),
        (400, "error_to_in_future.json", "Invalid value specified for 'to'. Time is in the future"),
    ],
)
def test_error_bodies_become_venue_errors(status: int, name: str, message: str) -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(EUR_1M, status, fixture_bytes(name), LATER)
    assert (info.value.status, info.value.code, info.value.msg) == (status, None, message)


def test_error_code_is_kept_in_the_message() -> None:
    body = b'{"errorCode": "NOT_FOUND", "errorMessage": "The instrument was not found"}'
    with pytest.raises(VenueError) as info:
        codec.parse_history(EUR_1M, 404, body, LATER)
    assert info.value.msg == "NOT_FOUND: The instrument was not found"


def test_error_status_without_body_is_venue_error() -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(EUR_1M, 502, b"<html>Bad Gateway</html>", LATER)
    assert (info.value.status, info.value.msg) == (502, "no error body")


# --- malformed answers -----------------------------------------------------


def _with_candle(**changes: Any) -> bytes:
    payload = fixture_json("candles_eur_usd_m1.json")
    payload["candles"][0].update(changes)
    return json.dumps(payload).encode()


def _with(**changes: Any) -> bytes:
    payload = fixture_json("candles_eur_usd_m1.json")
    payload.update(changes)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        _with(candles=None),
        _with(instrument="GBP_USD"),
        _with(granularity="M5"),
        _with(candles=["2016-10-17T15:16:00Z"]),
        _with_candle(complete="true"),
        _with_candle(time="2016-10-17T15:16:30.000000000Z"),  # not on the minute
        _with_candle(time="2016-10-17 15:16:00"),
        _with_candle(time="2016-02-30T15:16:00Z"),
        _with_candle(time=1476717360),
        _with_candle(volume=True),
        _with_candle(volume=12.5),
        _with_candle(volume=-1),
        _with_candle(mid={"o": 1.09812, "h": "1.09822", "l": "1.09808", "c": "1.09818"}),
        _with_candle(mid={"o": "NaN", "h": "1.09822", "l": "1.09808", "c": "1.09818"}),
        _with_candle(mid={"o": "1.09812", "h": "1.09822", "l": "1.09808"}),
        _with_candle(mid="1.09812"),
    ],
)
def test_malformed_answers_raise_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        codec.parse_history(EUR_1M, 200, body, LATER)


def test_times_with_fewer_fractional_digits_are_read() -> None:
    for text in ("2016-10-17T15:16:00Z", "2016-10-17T15:16:00.000Z"):
        candles = codec.parse_history(EUR_1M, 200, _with_candle(time=text), LATER)
        assert candles[0].ts == T0


# --- requests --------------------------------------------------------------


def test_history_request_asks_for_exactly_start_to_end() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    req = codec.history_request(EUR_1M, start, start + timedelta(hours=2), 5000)

    assert (req.method, req.path, req.weight) == ("GET", "/v3/instruments/EUR_USD/candles", 1)
    assert dict(req.params) == {
        "price": "M",
        "granularity": "M1",
        "from": "2024-03-01T00:00:00.000000000Z",
        # The bar opening at `end` is not asked for, however OANDA reads `to`.
        "to": "2024-03-01T01:59:59.999999000Z",
    }
    assert dict(req.headers) == {"Authorization": f"Bearer {TOKEN}"}


def test_history_request_starts_on_a_bar_and_spans_at_most_limit_bars() -> None:
    start = datetime(2024, 3, 1, 0, 0, 30, tzinfo=UTC)  # inside the 00:00 bar
    req = codec.history_request(EUR_1M, start, start + timedelta(days=10), 100)
    assert req.params["from"] == "2024-03-01T00:01:00.000000000Z"
    assert req.params["to"] == "2024-03-01T01:40:59.999999000Z"  # 100 bars from 00:01


@pytest.mark.parametrize(
    ("timeframe", "granularity", "alignment"),
    [
        ("5m", "M5", {}),
        ("1h", "H1", {}),
        ("4h", "H4", {"dailyAlignment": "0", "alignmentTimezone": "UTC"}),
        ("1d", "D", {"dailyAlignment": "0", "alignmentTimezone": "UTC"}),
        ("1w", "W", {"dailyAlignment": "0", "alignmentTimezone": "UTC",
                     "weeklyAlignment": "Monday"}),
        ("1M", "M", {"dailyAlignment": "0", "alignmentTimezone": "UTC"}),
    ],
)  # fmt: skip
def test_day_aligned_granularities_ask_for_the_utc_grid(
    timeframe: str, granularity: str, alignment: dict[str, str]
) -> None:
    series = SeriesKey("oanda", "EUR_USD", timeframe)
    start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday: aligned for every timeframe
    params = dict(codec.history_request(series, start, start + timedelta(days=90), 10).params)
    assert params.pop("granularity") == granularity
    assert {k: v for k, v in params.items() if k not in ("price", "from", "to")} == alignment


def test_timeframes_are_those_with_a_granularity_on_the_utc_grid() -> None:
    supported = [tf for tf in ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h",
                               "8h", "12h", "1d", "3d", "1w", "1M") if codec.timeframe_supported(tf)]  # fmt: skip
    assert supported == ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d",
                         "1w", "1M"]  # fmt: skip
    with pytest.raises(ValueError, match="3m"):
        codec.history_request(SeriesKey("oanda", "EUR_USD", "3m"), T0, LATER, 10)


@pytest.mark.parametrize("limit", [0, 5001])
def test_limit_outside_the_page_size_is_refused(limit: int) -> None:
    with pytest.raises(ValueError):
        codec.history_request(EUR_1M, T0, T0 + timedelta(hours=1), limit)


def test_to_is_clamped_to_the_open_of_the_bar_end_falls_in() -> None:
    """A window up to "now" ends at the open of the bar in progress: `to`
    is never later than now floored to the timeframe, so a local clock ahead
    of OANDA's (by less than the bar's elapsed part) gets no 400."""
    now = datetime(2024, 3, 4, 12, 0, 37, 250000, tzinfo=UTC)
    req = codec.history_request(EUR_1M, now - timedelta(hours=1), now, 5000)
    assert req.params["from"] == "2024-03-04T11:01:00.000000000Z"
    assert req.params["to"] == "2024-03-04T11:59:59.999999000Z"  # not 12:00:37.249999
    hourly = codec.history_request(EUR_1H, now - timedelta(days=1), now, 5000)
    assert hourly.params["to"] == "2024-03-04T11:59:59.999999000Z"
    # Only the bar in progress: nothing closed to ask for.
    with pytest.raises(ValueError, match="empty window"):
        codec.history_request(EUR_1M, EUR_1M.tf.floor(now), now, 5000)


def test_window_holding_no_bar_open_is_refused() -> None:
    with pytest.raises(ValueError, match="empty window"):
        codec.history_request(EUR_1M, T0 + timedelta(seconds=10), T0 + timedelta(seconds=50), 10)


def test_instrument_is_quoted_into_the_path() -> None:
    req = codec.history_request(SeriesKey("oanda", "EUR/USD", "1m"), T0, LATER, 10)
    assert req.path == "/v3/instruments/EUR%2FUSD/candles"


def test_price_option_selects_the_component() -> None:
    bid = OandaCodec(credentials=Credentials(TOKEN), options={"price": "B"})
    assert bid.history_request(EUR_1M, T0, LATER, 10).params["price"] == "B"


@pytest.mark.parametrize("options", [{"price": "X"}, {"price": "BA"}, {"price": "mid"}])
def test_bad_price_option_names_the_allowed_values(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="M, B, A"):
        OandaCodec(options=options)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="granularity"):
        OandaCodec(options={"granularity": "M1"})


# --- credentials -------------------------------------------------------------


def test_token_never_shows_in_reprs_or_errors() -> None:
    req = codec.history_request(EUR_1M, T0, T0 + timedelta(hours=1), 60)
    try:
        codec.parse_history(EUR_1M, 401, fixture_bytes("error_unauthorized.json"), LATER)
    except VenueError as exc:
        error = f"{exc!r} {exc}"
    shown = " ".join((repr(req), str(req), repr(req.headers), repr(codec), error))
    assert TOKEN not in shown
    assert "redacted" in repr(req)


def test_config_needs_a_token_and_checks_the_price_option(tmp_path: Path) -> None:
    venue = {"name": "oanda", "kind": "oanda", "rest_url": "https://api-fxpractice.oanda.com",
             "ws_url": "wss://stream-fxpractice.oanda.com"}  # fmt: skip
    with pytest.raises(ConfigError, match="needs credentials"):
        parse_config({"venues": [venue]}, env={})
    token_venue = {**venue, "api_key_env": "OANDA_TOKEN"}
    env = {"OANDA_TOKEN": TOKEN}
    with pytest.raises(ConfigError, match="M, B, A") as info:
        parse_config({"venues": [{**token_venue, "options": {"price": "X"}}]}, env=env)
    assert "options" in str(info.value)
    config = parse_config({"venues": [{**token_venue, "options": {"price": "A"}}]}, env=env)
    assert TOKEN not in repr(config)
    assert config.venues[0].codec().history_request(EUR_1M, T0, LATER, 1).params["price"] == "A"


def test_poll_delay_defaults_per_venue_and_an_explicit_one_is_kept() -> None:
    """The default comes from the venue's limits: 2 s after the close, where
    OANDA, whose candles settle in up to 120 s, is polled again until they do
    (sooner only for a venue that settles sooner). A configured one is kept."""
    venue = {"name": "oanda", "kind": "oanda", "rest_url": "https://api-fxpractice.oanda.com",
             "api_key_env": "OANDA_TOKEN"}  # fmt: skip
    env = {"OANDA_TOKEN": TOKEN}
    (default,) = parse_config({"venues": [venue]}, env=env).venues
    assert default.poll_delay == timedelta(seconds=2) == default_poll_delay(codec.limits)
    (explicit,) = parse_config({"venues": [{**venue, "poll_delay": "15s"}]}, env=env).venues
    assert explicit.poll_delay == timedelta(seconds=15)
    quick = dataclasses.replace(codec.limits, settling_s=1.0)
    assert default_poll_delay(quick) == timedelta(seconds=1)
    with pytest.raises(ConfigError, match="poll_delay"):
        parse_config({"venues": [{**venue, "poll_delay": "0s"}]}, env=env)


# --- limits and the rest of the interface -------------------------------------


def test_registry_and_limits() -> None:
    assert "oanda" in known_kinds()
    limits = get_codec("oanda").limits
    assert (limits.page_size, limits.request_weight) == (5000, 1)
    assert (limits.rate_capacity, limits.rate_period_s) == (100, 1.0)
    assert limits.sparse and not limits.exact_genesis and limits.history_horizon_bars is None
    assert get_codec("oanda").needs_credentials and not get_codec("oanda").needs_secret
    # A candle is complete only once a price after its end came (seconds; at
    # quiet hours tens of seconds): not judged before two minutes.
    assert limits.settling_s == 120.0
    assert get_codec("oanda", "fx").venue == "fx"


def test_rate_facts_read_429_and_retry_after() -> None:
    facts = codec.rate_facts(429, {"Retry-After": "1"})
    assert facts.rate_limited and facts.retry_after_s == 1.0 and not facts.banned
    assert facts.used_weight is None
    quiet = codec.rate_facts(200, {"RequestID": "24577765736927846"})
    assert not quiet.rate_limited and quiet.retry_after_s is None


def test_there_is_no_stream_and_no_genesis_request() -> None:
    assert codec.stream is None  # the pricing stream carries prices, not bars: polled
    with pytest.raises(NotImplementedError):
        codec.genesis_request(EUR_1M)
