"""Kraken spot: REST `GET /0/public/OHLC` and the WebSocket v2 `ohlc` channel.

Wire formats as documented at
- https://docs.kraken.com/api-reference/market-data/get-ohlc-data (REST OHLC: rows
  `[time, "open", "high", "low", "close", "vwap", "volume", count]` under the pair's
  name plus `last`; only the newest 720 entries, the last one the unfinished bar),
- https://docs.kraken.com/exchange/guides/general/errors (every answer is HTTP 200
  with an `error` array: a non-empty one means the request failed),
- https://docs.kraken.com/api/docs/websocket-v2/ohlc, .../websocket-v2/heartbeat and
  .../websocket-v2/status (`wss://ws.kraken.com/v2`: subscribe by message, one ack
  per symbol carrying `req_id`, candles as JSON numbers with an RFC 3339
  `interval_begin` and no closed flag).

Symbols are the WebSocket v2 pair names, e.g. "BTC/USD": the only form the v2
stream takes, and one the REST API takes too; asked with `assetVersion=1`, REST
also answers under that same name (Kraken's internal "XXBTZUSD" otherwise, which
this codec accepts as well: an answer carries exactly one pair).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import EPOCH, require_utc
from candled.venues.base import (
    CodecBase,
    CodecError,
    Credentials,
    FrameResult,
    HttpRequest,
    RateFacts,
    RateLimitedAnswer,
    VenueError,
    VenueLimits,
    bar_open,
    from_seconds,
    json_number,
    json_or_none,
    no_options,
    shown,
    venue_words,
)

LIMITS = VenueLimits(
    # OHLC answers with at most 720 entries (get-ohlc-data, above).
    page_size=720,
    request_weight=1,  # public endpoints are limited by request count per IP
    # Kraken publishes no cap on symbols per connection; one subscribe message
    # names them all, so stay well below the collector's per-message batch.
    streams_per_connection=100,
    # No documented maximum age; reconnect daily like the other venues.
    max_connection_age_s=24 * 3600.0,
    exact_genesis=False,  # history starts 720 entries back, whatever `since` says
    # No row for an interval without trades: freqtrade/freqtrade issue 3392 ("somewhere
    # in the last 720 candles one candle had no trades"), and v2 updates "are
    # generated on trade events".
    sparse=True,
    # Kraken documents no number for public stream messages; subscribing is one
    # message per timeframe, so one a second costs nothing.
    max_ws_messages_per_s=1.0,
    # "Calling the public endpoints at a frequency of 1 per second (or less) would
    # remain within the rate limits" (support.kraken.com article 206548367, "What
    # are the API rate limits?"); bursts capped at 15, the REST call counter's
    # maximum (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits).
    rate_capacity=15,
    rate_period_s=15.0,
    # 720 entries of which the last is the unfinished bar: the newest 719 closed
    # bars are all the history there is.
    history_horizon_bars=719,
    final_on_next=True,  # the ohlc channel has no closed flag
    subscribe_in_url=False,  # wss://ws.kraken.com/v2 takes subscribe messages only
)
OHLC_PATH = "/0/public/OHLC"
STREAM_PATH = "/v2"
# Domain timeframe -> Kraken interval in minutes. Kraken also has 21600 (15 days),
# which the domain lacks, and 10080, whose weeks need not start on the domain's
# Monday: both are left out rather than stored misaligned.
INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440}
_TIMEFRAMES = {minutes: tf for tf, minutes in INTERVALS.items()}
# RFC 3339 as Kraken writes it: UTC, up to nanoseconds ("2023-10-04T15:25:00.000000000Z").
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")
_ROW_FIELDS = 8  # time, open, high, low, close, vwap, volume, count
_MALFORMED = FrameResult(malformed=True)
# Refusals for the rate limit, sent in an HTTP 200 body (docs.kraken.com, "Errors").
_RATE_LIMITED = frozenset({"EGeneral:Too many requests", "EAPI:Rate limit exceeded"})


class KrakenCodec(CodecBase):
    LIMITS = LIMITS
    TIMEFRAMES = INTERVALS

    def __init__(
        self,
        venue: str = "kraken",
        credentials: Credentials | None = None,  # market data needs no key
        options: Mapping[str, str] | None = None,
    ) -> None:
        no_options("kraken", options)
        super().__init__(venue)

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        self.check_window(start, end, limit)
        # OHLC has no end and no count: it answers from `since` to now (within
        # the 720 newest entries), and the backfill keeps what lies in the window.
        # `since` is exclusive; one second earlier keeps the bar opening at `start`.
        since = (require_utc(start) - EPOCH) // timedelta(seconds=1) - 1
        return HttpRequest(
            method="GET",
            path=OHLC_PATH,
            params={
                "pair": series.symbol,
                "interval": str(_minutes(series)),
                "since": str(since),
                "assetVersion": "1",  # answer under the display name we asked with
            },
            weight=LIMITS.request_weight,
        )

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        raise ValueError("kraken cannot tell a series' first bar: it serves the newest 720 only")

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        payload = json_or_none(body)  # None: an error status, or a malformed body
        errors = payload.get("error") if isinstance(payload, dict) else None
        if status != 200:
            raise VenueError(status, None, _error_text(errors) or f"HTTP {status}")
        if not isinstance(payload, dict):
            raise CodecError(f"OHLC: expected a JSON object, got {type(payload).__name__}")
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise CodecError("OHLC: `error` is not a list of strings")
        if any(e in _RATE_LIMITED for e in errors):
            raise RateLimitedAnswer(status, _error_text(errors))
        if errors:  # e.g. "EQuery:Unknown asset pair"
            raise VenueError(status, None, _error_text(errors))
        rows = _pair_rows(payload.get("result"))
        tf, now = series.tf, require_utc(now)
        # The last entry is the bar still forming ("not-yet-committed"), always.
        candles = [_row_candle(series, tf, row, i) for i, row in enumerate(rows[:-1])]
        candles.sort(key=lambda c: c.ts)
        return [c for c in candles if tf.close_time(c.ts) <= now]

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        # Kraken says "EGeneral:Too many requests" in an HTTP 200 body, which
        # parse_history raises as RateLimitedAnswer. It documents no usage or
        # Retry-After header; a 429 from its edge counts.
        return RateFacts(
            used_weight=None, retry_after_s=None, rate_limited=status == 429, banned=False
        )

    def stream_name(self, series: SeriesKey) -> str:
        return f"ohlc-{_minutes(series)}:{series.symbol}"

    def stream_path(self, series: Sequence[SeriesKey]) -> str:
        return STREAM_PATH  # streams are subscribed by message, never in the URL

    def login_messages(self) -> list[str]:
        return []

    def subscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._method("subscribe", series, request_id)

    def unsubscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._method("unsubscribe", series, request_id)

    def _method(self, method: str, series: Sequence[SeriesKey], request_id: int) -> str:
        intervals = {_minutes(s) for s in series}
        if len(intervals) != 1:
            raise ValueError(f"one interval per {method} message, got {sorted(intervals)}")
        params = {"channel": "ohlc", "symbol": [s.symbol for s in series],
                  "interval": intervals.pop()}  # fmt: skip
        return json.dumps({"method": method, "params": params, "req_id": request_id})

    def parse_frame(self, text: str) -> FrameResult:
        payload = json_or_none(text)
        if not isinstance(payload, dict):
            return _MALFORMED
        if "method" in payload or "success" in payload:  # an answer to a request
            return _reply(payload)
        channel = payload.get("channel")
        if channel == "heartbeat":
            # Sent about once a second when the subscribed channels are quiet: on
            # a venue without bars for quiet minutes, this is what says "alive".
            return FrameResult(is_data=True)
        if channel != "ohlc":
            return FrameResult()  # status and other channels: not ours to judge
        data = payload.get("data")
        if payload.get("type") not in ("snapshot", "update") or not isinstance(data, list):
            return _MALFORMED
        try:
            candles = [self._event_candle(entry) for entry in data]
        except CodecError:
            return _MALFORMED
        # Oldest first: the collector finalises a bar when a later one arrives.
        candles.sort(key=lambda c: c.ts)
        return FrameResult(forming=tuple(candles), is_data=True)

    def _event_candle(self, entry: object) -> Candle:
        if not isinstance(entry, dict):
            raise CodecError("ohlc entry is not an object")
        symbol, interval = entry.get("symbol"), entry.get("interval")
        if not isinstance(symbol, str) or not symbol:
            raise CodecError("ohlc symbol")
        if not isinstance(interval, int) or isinstance(interval, bool):
            raise CodecError("ohlc interval")
        timeframe = _TIMEFRAMES.get(interval)
        if timeframe is None:
            raise CodecError(f"ohlc interval {interval} minutes is not collected")
        series = SeriesKey(self._venue, symbol, timeframe)
        ts = bar_open(series.tf, _rfc3339(entry.get("interval_begin")))
        fields = ("open", "high", "low", "close", "volume")  # JSON numbers on the v2 stream
        o, h, low, c, v = (json_number(entry.get(k)) for k in fields)
        return Candle(series, ts, o, h, low, c, v)


def _minutes(series: SeriesKey) -> int:
    try:
        return INTERVALS[series.timeframe]
    except KeyError:
        raise ValueError(f"kraken has no {series.timeframe} interval") from None


def _pair_rows(result: object) -> list[Any]:
    """The rows of the one pair in `result` (beside `last`, the polling cursor)."""
    if not isinstance(result, dict):
        raise CodecError("OHLC: `result` is not an object")
    pairs = [rows for name, rows in result.items() if name != "last"]
    if len(pairs) != 1 or not isinstance(pairs[0], list):
        raise CodecError(f"OHLC: expected the rows of one pair, got {len(pairs)} entries")
    return pairs[0]


def _row_candle(series: SeriesKey, tf: Timeframe, row: object, index: int) -> Candle:
    # [time, "open", "high", "low", "close", "vwap", "volume", count]
    if not isinstance(row, list) or len(row) != _ROW_FIELDS:
        raise CodecError(f"OHLC row {index}: expected an array of {_ROW_FIELDS} fields")
    time_s = row[0]
    try:
        if not isinstance(time_s, int) or isinstance(time_s, bool) or time_s < 0:
            raise CodecError(f"time {shown(time_s)} is not a Unix timestamp in seconds")
        ts = bar_open(tf, from_seconds(time_s))
        o, h, low, c, v = (_decimal(row[i]) for i in (1, 2, 3, 4, 6))
    except CodecError as exc:
        raise CodecError(f"OHLC row {index}: {exc}") from None
    return Candle(series, ts, o, h, low, c, v)


def _rfc3339(value: object) -> datetime:
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise CodecError(f"{shown(value)} is not an RFC 3339 UTC time")
    year, month, day, hour, minute, second = (int(f) for f in m.groups()[:6])
    fraction = m.group(7)
    try:
        ts = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise CodecError(f"{shown(value)} is not a valid time") from None
    # Nanoseconds past the microsecond are dropped; an aligned open has none.
    return ts + timedelta(microseconds=int((fraction or "0").ljust(6, "0")[:6]))


def _decimal(value: object) -> float:
    # REST sends decimals as strings to keep their precision.
    if not isinstance(value, str):
        raise CodecError(f"{shown(value)} is not a decimal string")
    try:
        return _finite(float(value))
    except ValueError:
        raise CodecError(f"{shown(value)} is not a decimal") from None


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise CodecError(f"{number!r} is not finite")
    return number


def _error_text(errors: object) -> str:
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return "; ".join(errors)
    return ""


def _reply(payload: dict[str, Any]) -> FrameResult:
    # {"method": "subscribe", "result": {...}, "success": true, "req_id": 1, ...}
    # or {"method": "subscribe", "error": "...", "success": false, "req_id": 1, ...}
    req_id = payload.get("req_id")
    if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
        return _MALFORMED
    if payload.get("success") is False:
        error = venue_words(payload.get("error", "request refused"))
        return FrameResult(reply_id=req_id, error=error)
    return FrameResult(reply_id=req_id)
