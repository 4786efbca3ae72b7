"""The Coinbase Exchange codec against payloads shaped as Coinbase documents them.

Sources of the fixture shapes:
- candle buckets `[time, low, high, open, close, volume]` (JSON numbers, time in
  Unix seconds, newest first, none for intervals without ticks), the 300-candle
  cap and the granularities:
  https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
  (`candles_btc_usd_1m.json`; `candles_docs_example.json` is the example bucket of
  the same page's earlier edition, docs.pro.coinbase.com "Get Historic Rates")
- a recorded answer (`candles_eth_usd_1m_recorded.json`): the first two buckets
  quoted in https://github.com/coinbase/coinbase-pro-node/issues/204
- error bodies `{"message": ...}`: https://docs.cdp.coinbase.com/exchange/rest-api/requests;
  the too-many-buckets message as quoted in https://github.com/ccxt/ccxt/issues/9268;
  429 "Public rate limit exceeded" as quoted in https://github.com/askmike/gekko/issues/2859
- rate limits (10 requests/s per IP, bursts up to 15, 429):
  https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from candled.domain import Candle, SeriesKey
from candled.venues import CodecError, Credentials, VenueError, get_codec, known_kinds
from candled.venues.coinbase import CoinbaseCodec

FIXTURES = Path(__file__).parent / "fixtures" / "coinbase"
BTC_1M = SeriesKey("coinbase", "BTC-USD", "1m")
T0 = datetime(2024, 1, 1, tzinfo=UTC)  # 1704067200, the BTC fixture's oldest bucket
codec = CoinbaseCodec()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


# --- history ---------------------------------------------------------------


def test_parse_candles_reorders_fields_and_rows_oldest_first() -> None:
    body = fixture_bytes("candles_btc_usd_1m.json")
    candles = codec.parse_history(BTC_1M, 200, body, T0 + minutes(10))

    # Newest first on the wire; the minute at T0+1m had no trades, so no bucket.
    assert [c.ts for c in candles] == [T0, T0 + minutes(2), T0 + minutes(3)]
    assert all(c.ts.tzinfo is UTC for c in candles)
    # [time, low, high, open, close, volume]: low and high come before open.
    assert candles[0] == Candle(BTC_1M, T0, 42224.35, 42259.99, 42210.0, 42250.0, 0.5)
    assert candles[-1] == Candle(
        BTC_1M, T0 + minutes(3), 42262.5, 42290.01, 42251.37, 42288.0, 3.71590232
    )


def test_parse_recorded_answer() -> None:
    eth = SeriesKey("coinbase", "ETH-USD", "1m")
    body = fixture_bytes("candles_eth_usd_1m_recorded.json")
    now = datetime(2018, 1, 6, 19, 0, tzinfo=UTC)
    candles = codec.parse_history(eth, 200, body, now)

    newest = datetime.fromtimestamp(1515264780, UTC)
    assert [c.ts for c in candles] == [newest - minutes(1), newest]
    assert candles[1] == Candle(eth, newest, 994.5, 994.5, 994.5, 994.5, 14.697630010000001)


def test_parse_candles_leaves_out_the_bucket_in_progress() -> None:
    body = fixture_bytes("candles_btc_usd_1m.json")
    # The newest bucket opens at T0+3m and closes at T0+4m.
    open_now = codec.parse_history(BTC_1M, 200, body, T0 + minutes(3) + timedelta(seconds=59))
    at_close = codec.parse_history(BTC_1M, 200, body, T0 + minutes(4))

    assert [c.ts for c in open_now] == [T0, T0 + minutes(2)]
    assert len(at_close) == 3


def test_parse_empty_array_is_no_data() -> None:
    assert codec.parse_history(BTC_1M, 200, b"[]", T0) == []


def test_docs_example_bucket_is_not_on_the_minute_grid() -> None:
    # The old docs' example time (1415398768) is no bucket start of any granularity:
    # a bucket off the grid is not a bar we can store.
    with pytest.raises(CodecError, match="not aligned"):
        codec.parse_history(BTC_1M, 200, fixture_bytes("candles_docs_example.json"), T0)


@pytest.mark.parametrize(
    ("status", "fixture", "message"),
    [
        (404, "error_not_found.json", "NotFound"),
        (400, "error_too_many_buckets.json",
         "granularity too small for the requested time range. "
         "Count of aggregations requested exceeds 300"),
        (429, "error_rate_limited.json", "Public rate limit exceeded"),
    ],
)  # fmt: skip
def test_error_body_becomes_venue_error(status: int, fixture: str, message: str) -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, status, fixture_bytes(fixture), T0)
    assert (info.value.status, info.value.code, info.value.msg) == (status, None, message)


def test_error_status_without_message_is_venue_error() -> None:
    with pytest.raises(VenueError) as info:
        codec.parse_history(BTC_1M, 502, b"<html>Bad Gateway</html>", T0)
    assert (info.value.status, info.value.code, info.value.msg) == (502, None, "no error body")


def _body(*rows: Any) -> bytes:
    return json.dumps(list(rows)).encode()


GOOD = [1704067200, 1.0, 2.0, 1.5, 1.5, 10.0]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"message": "NotFound"}',  # an error body with a 200 status
        _body(GOOD[:5]),  # too short
        _body([*GOOD, 7.0]),  # too long
        _body({"time": 1704067200}),
        _body(["1704067200", *GOOD[1:]]),  # time as a string
        _body([1704067200.0, *GOOD[1:]]),  # time as a float
        _body([True, *GOOD[1:]]),
        _body([-60, *GOOD[1:]]),
        _body([*GOOD[:3], "1.5", *GOOD[4:]]),  # Coinbase sends numbers, not strings
        _body([*GOOD[:3], None, *GOOD[4:]]),
        _body([*GOOD[:5], False]),
        b"[[1704067200, 1.0, 2.0, NaN, 1.5, 10.0]]",
        b"[[1704067200, 1.0, Infinity, 1.5, 1.5, 10.0]]",
        _body(GOOD, [1704067230, *GOOD[1:]]),  # the second bucket is off the grid
    ],
)
def test_malformed_history_raises_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        codec.parse_history(BTC_1M, 200, body, T0 + minutes(10))


# --- requests --------------------------------------------------------------


def test_history_request_asks_exactly_the_window() -> None:
    req = codec.history_request(BTC_1M, T0, T0 + minutes(300), 300)

    assert (req.method, req.path, req.weight, dict(req.headers)) == (
        "GET", "/products/BTC-USD/candles", 1, {}
    )  # fmt: skip
    # `end` half a bucket past the last wanted open: [start, end) whether the venue
    # reads `end` as inclusive or exclusive, 299.5 buckets wide (under the cap).
    assert dict(req.params) == {
        "granularity": "60",
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-01-01T04:59:30Z",
    }


def test_history_request_rounds_unaligned_bounds_to_the_bars_inside() -> None:
    start = T0 + timedelta(seconds=5)  # the first bar opening inside is T0+1m
    end = T0 + minutes(3) + timedelta(seconds=1)  # the last is T0+3m
    req = codec.history_request(BTC_1M, start, end, 300)
    assert (req.params["start"], req.params["end"]) == (
        "2024-01-01T00:01:00Z", "2024-01-01T00:03:30Z"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("timeframe", "granularity", "end"),
    [("5m", "300", "2024-01-01T00:02:30Z"), ("15m", "900", "2024-01-01T00:07:30Z"),
     ("1h", "3600", "2024-01-01T00:30:00Z"), ("6h", "21600", "2024-01-01T03:00:00Z"),
     ("1d", "86400", "2024-01-01T12:00:00Z")],
)  # fmt: skip
def test_history_request_granularities(timeframe: str, granularity: str, end: str) -> None:
    key = SeriesKey("coinbase", "ETH-EUR", timeframe)
    req = codec.history_request(key, T0, key.tf.next(T0), 1)
    assert dict(req.params) == {"granularity": granularity, "start": "2024-01-01T00:00:00Z",
                                "end": end}  # fmt: skip


def test_history_request_accepts_other_timezones_as_the_same_instant() -> None:
    plus2 = timezone(timedelta(hours=2))
    shifted = codec.history_request(
        BTC_1M, T0.astimezone(plus2), (T0 + minutes(5)).astimezone(plus2), 5
    )
    assert shifted == codec.history_request(BTC_1M, T0, T0 + minutes(5), 5)


def test_history_request_quotes_the_product_id() -> None:
    odd = SeriesKey("coinbase", "BTC/USD?x", "1m")
    assert codec.history_request(odd, T0, T0 + minutes(1), 1).path == (
        "/products/BTC%2FUSD%3Fx/candles"
    )


@pytest.mark.parametrize("limit", [0, 301])
def test_history_request_rejects_limits_outside_a_page(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        codec.history_request(BTC_1M, T0, T0 + minutes(1), limit)


def test_history_request_rejects_windows_it_cannot_ask() -> None:
    with pytest.raises(ValueError, match="more than 10 bars"):
        codec.history_request(BTC_1M, T0, T0 + minutes(11), 10)
    with pytest.raises(ValueError, match="no bar opens"):
        codec.history_request(BTC_1M, T0 + timedelta(seconds=1), T0 + timedelta(seconds=59), 1)
    with pytest.raises(ValueError, match="no 4h candles"):
        codec.history_request(SeriesKey("coinbase", "BTC-USD", "4h"), T0, T0 + minutes(240), 1)
    with pytest.raises(ValueError):
        codec.history_request(BTC_1M, T0.replace(tzinfo=None), T0 + minutes(1), 1)


def test_genesis_cannot_be_asked() -> None:
    assert codec.limits.exact_genesis is False
    with pytest.raises(NotImplementedError):
        codec.genesis_request(BTC_1M)


# --- limits, rates, registry -----------------------------------------------


def test_limits_follow_coinbase_documentation() -> None:
    limits = codec.limits
    assert (limits.page_size, limits.request_weight) == (300, 1)
    assert (limits.rate_capacity, limits.rate_period_s) == (10, 1.0)  # 10 requests/s per IP
    assert limits.sparse and not limits.exact_genesis and not codec.needs_credentials
    assert limits.history_horizon_bars is None


def test_timeframes() -> None:
    for timeframe in ("1m", "5m", "15m", "1h", "6h", "1d"):
        assert codec.timeframe_supported(timeframe)
    for timeframe in ("1s", "3m", "30m", "2h", "4h", "12h", "1w", "1M", "60"):
        assert not codec.timeframe_supported(timeframe)


def test_429_waits_a_second_without_retry_after() -> None:
    facts = codec.rate_facts(429, {})
    assert facts.rate_limited and not facts.banned
    assert (facts.retry_after_s, facts.used_weight) == (1.0, None)


@pytest.mark.parametrize("status", [200, 400, 404, 418, 500])
def test_other_statuses_carry_no_rate_facts(status: int) -> None:
    facts = codec.rate_facts(status, {"Retry-After": "30"})
    assert not facts.rate_limited and not facts.banned and facts.retry_after_s is None


def test_no_candle_stream() -> None:
    # The Exchange feed has no candle channel: live bars are polled.
    assert codec.stream is None
    assert not any(hasattr(codec, name) for name in ("parse_frame", "subscribe_message"))


def test_registry_and_options() -> None:
    assert "coinbase" in known_kinds()
    # Market data needs no key: credentials given anyway are not kept.
    named = get_codec("coinbase", "coinbase-eu", Credentials("key-123", "secret-456"))
    assert named.venue == "coinbase-eu" and isinstance(named, CoinbaseCodec)
    assert "key-123" not in repr(vars(named)) and "secret-456" not in repr(vars(named))
    with pytest.raises(ValueError, match="no options"):
        get_codec("coinbase", options={"price": "mid"})
