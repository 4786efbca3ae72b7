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
  `interval_begin` and no closed flag: a bar is final when the next one opens).

Symbols are the WebSocket v2 pair names, e.g. "BTC/USD": the only form the v2
stream takes, and one the REST API takes too; asked with `assetVersion=1`, REST
also answers under that same name (Kraken's internal "XXBTZUSD" otherwise, which
this codec accepts as well: an answer carries exactly one pair).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import EPOCH, require_utc
from candled.venues.base import (
    CodecBase,
    CodecError,
    Credentials,
    HttpRequest,
    RateFacts,
    RateLimitedAnswer,
    VenueError,
    VenueLimits,
    no_options,
)
from candled.venues.stream import (
    Malformed,
    SessionBase,
    StreamCodecBase,
    StreamEvent,
    StreamLimits,
)
from candled.venues.wire import (
    bar_at_seconds,
    bar_open,
    closed_by,
    decimal_string,
    json_number,
    json_or_none,
    parse_rfc3339,
    shown,
    venue_words,
)

LIMITS = VenueLimits(
    # OHLC answers with at most 720 entries (get-ohlc-data, above).
    page_size=720,
    request_weight=1,  # public endpoints are limited by request count per IP
    exact_genesis=False,  # history starts 720 entries back, whatever `since` says
    # No row for an interval without trades: freqtrade/freqtrade issue 3392 ("somewhere
    # in the last 720 candles one candle had no trades"), and v2 updates "are
    # generated on trade events".
    sparse=True,
    # "Calling the public endpoints at a frequency of 1 per second (or less) would
    # remain within the rate limits" (support.kraken.com article 206548367, "What
    # are the API rate limits?"); bursts capped at 15, the REST call counter's
    # maximum (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits).
    rate_capacity=15,
    rate_period_s=15.0,
    # 720 entries of which the last is the unfinished bar: the newest 719 closed
    # bars are all the history there is.
    history_horizon_bars=719,
)
STREAM_LIMITS = StreamLimits(
    # Kraken publishes no cap on symbols per connection; one subscribe message
    # names them all, so stay well below the collector's per-message batch.
    streams_per_connection=100,
    # No documented maximum age; reconnect daily like the other venues.
    max_connection_age_s=24 * 3600.0,
    # Kraken documents no number for public stream messages; subscribing is one
    # message per timeframe, so one a second costs nothing.
    max_messages_per_s=1.0,
)
OHLC_PATH = "/0/public/OHLC"
STREAM_PATH = "/v2"
# Domain timeframe -> Kraken interval in minutes. Kraken also has 21600 (15 days),
# which the domain lacks, and 10080, whose weeks need not start on the domain's
# Monday: both are left out rather than stored misaligned.
INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440}
_TIMEFRAMES = {minutes: tf for tf, minutes in INTERVALS.items()}
_ROW_FIELDS = 8  # time, open, high, low, close, vwap, volume, count
# Refusals for the rate limit, sent in an HTTP 200 body (docs.kraken.com, "Errors").
_RATE_LIMITED = frozenset({"EGeneral:Too many requests", "EAPI:Rate limit exceeded"})


class KrakenCodec(CodecBase):
    """Kraken's OHLC over REST, with its v2 `ohlc` channel (`KrakenStream`)."""

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
        self._stream = KrakenStream(venue)

    @property
    def stream(self) -> KrakenStream:
        """The v2 `ohlc` channel."""
        return self._stream

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """OHLC `since` one second before `start`; the backfill keeps what lies in the window."""
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

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """The committed rows of an OHLC answer; its `error` array as `VenueError`
        (`RateLimitedAnswer` for a rate-limit refusal)."""
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
        # The last entry is the bar still forming ("not-yet-committed"), always.
        candles = (_row_candle(series, series.tf, row, i) for i, row in enumerate(rows[:-1]))
        return closed_by(candles, now)

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """A 429 from Kraken's edge; its own refusals come in the body (above)."""
        # Kraken says "EGeneral:Too many requests" in an HTTP 200 body, which
        # parse_history raises as RateLimitedAnswer. It documents no usage or
        # Retry-After header.
        return RateFacts(
            used_weight=None, retry_after_s=None, rate_limited=status == 429, banned=False
        )


class KrakenSession(SessionBase["KrakenStream"]):
    """One v2 connection: acks by `req_id` (one per symbol), heartbeats, and
    `ohlc` bars that are final when a later bar of their series opens."""

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        params = {"channel": "ohlc", "symbol": [s.symbol for s in keys],
                  "interval": _minutes(keys[0])}  # fmt: skip
        method = "subscribe" if subscribe else "unsubscribe"
        return json.dumps({"method": method, "params": params, "req_id": request_id})

    def receive(self, text: str) -> list[StreamEvent]:
        """Acks and refusals, heartbeats, `ohlc` snapshots and updates."""
        payload = json_or_none(text)
        if not isinstance(payload, dict):
            return [Malformed("not a JSON object")]
        if "method" in payload or "success" in payload:  # an answer to a request
            return [self._answer(payload)]
        channel = payload.get("channel")
        if channel == "heartbeat":
            # Sent about once a second when the subscribed channels are quiet: on
            # a venue without bars for quiet minutes, this is what says "alive".
            return self._data()
        if channel != "ohlc":
            return []  # status and other channels: not ours to judge
        data = payload.get("data")
        if payload.get("type") not in ("snapshot", "update") or not isinstance(data, list):
            return [Malformed("ohlc message without a snapshot or update")]
        try:
            candles = [self._event_candle(entry) for entry in data]
        except CodecError as e:
            return [Malformed(str(e))]
        candles.sort(key=lambda c: c.ts)  # oldest first: a later bar closes an earlier one
        return self._data(forming=candles)

    def _answer(self, payload: dict[str, Any]) -> StreamEvent:
        # {"method": "subscribe", "result": {...}, "success": true, "req_id": 1, ...}
        # or {"method": "subscribe", "error": "...", "success": false, "req_id": 1, ...}
        req_id = payload.get("req_id")
        if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
            return Malformed(f"req_id {shown(req_id)}")
        if payload.get("success") is False:
            return self._reply(req_id, venue_words(payload.get("error", "request refused")))
        return self._reply(req_id)

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
        series = SeriesKey(self.codec.venue, symbol, timeframe)
        ts = bar_open(series.tf, parse_rfc3339(entry.get("interval_begin")))
        fields = ("open", "high", "low", "close", "volume")  # JSON numbers on the v2 stream
        o, h, low, c, v = (json_number(entry.get(k)) for k in fields)
        return Candle(series, ts, o, h, low, c, v)


class KrakenStream(StreamCodecBase):
    """The v2 `ohlc` channel: subscribed by message, bars final when the next opens."""

    LIMITS = STREAM_LIMITS
    SPARSE = KrakenCodec.LIMITS.sparse
    PATH = STREAM_PATH  # streams are subscribed by message, never in the URL
    SESSION = KrakenSession

    def stream_name(self, key: SeriesKey) -> str:
        """`ohlc-<minutes>:<pair>`."""
        return f"ohlc-{_minutes(key)}:{key.symbol}"


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
    # [time, "open", "high", "low", "close", "vwap", "volume", count]; REST sends
    # decimals as strings to keep their precision.
    if not isinstance(row, list) or len(row) != _ROW_FIELDS:
        raise CodecError(f"OHLC row {index}: expected an array of {_ROW_FIELDS} fields")
    try:
        ts = bar_at_seconds(tf, row[0])
        o, h, low, c, v = (decimal_string(row[i]) for i in (1, 2, 3, 4, 6))
    except CodecError as exc:
        raise CodecError(f"OHLC row {index}: {exc}") from None
    return Candle(series, ts, o, h, low, c, v)


def _error_text(errors: object) -> str:
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return "; ".join(errors)
    return ""
