"""Binance spot: `GET /api/v3/klines` and the kline WebSocket streams.

Wire formats as documented at
https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints
and https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import SUPPORTED, require_utc
from candled.venues.base import (
    CodecBase,
    CodecError,
    Credentials,
    FrameResult,
    HttpRequest,
    RateFacts,
    VenueError,
    VenueLimits,
    bar_open,
    decimal_string,
    from_ms,
    header_count,
    json_or_none,
    no_options,
    seconds_or_none,
    shown,
    to_ms,
    venue_words,
)

LIMITS = VenueLimits(
    page_size=1000,
    request_weight=2,
    streams_per_connection=1024,
    max_connection_age_s=24 * 3600.0,
    exact_genesis=True,  # startTime=0&limit=1 answers the first bar after listing
    sparse=False,  # Binance publishes zero-volume bars
    max_ws_messages_per_s=5.0,
)
KLINES_PATH = "/api/v3/klines"
USED_WEIGHT_HEADER = "x-mbx-used-weight-1m"
# Binance intervals are exactly the domain's supported timeframes.
_INTERVALS = frozenset(SUPPORTED)
_MALFORMED = FrameResult(malformed=True)


class BinanceCodec(CodecBase):
    LIMITS = LIMITS
    TIMEFRAMES = _INTERVALS

    def __init__(
        self,
        venue: str = "binance",
        credentials: Credentials | None = None,  # market data needs no key
        options: Mapping[str, str] | None = None,
    ) -> None:
        no_options("binance", options)
        super().__init__(venue)

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        self.check_window(start, end, limit)
        # Binance's endTime is inclusive; one millisecond less makes [start, end).
        return self._klines(
            series, startTime=str(to_ms(start)), endTime=str(to_ms(end) - 1), limit=str(limit)
        )

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        return self._klines(series, startTime="0", limit="1")

    def _klines(self, series: SeriesKey, **params: str) -> HttpRequest:
        return HttpRequest(
            method="GET",
            path=KLINES_PATH,
            params={"symbol": series.symbol, "interval": series.timeframe, **params},
            weight=LIMITS.request_weight,
        )

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        payload = json_or_none(body)
        if status != 200:
            raise _venue_error(status, payload)
        if not isinstance(payload, list):
            raise CodecError(f"klines: expected a JSON array, got {type(payload).__name__}")
        now = require_utc(now)
        tf = series.tf
        candles = []
        for index, row in enumerate(payload):
            candle = _row_candle(series, tf, row, index)
            if tf.close_time(candle.ts) <= now:
                candles.append(candle)
        return candles

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        # Header names are case-insensitive; a plain Mapping may not know that.
        lowered = {name.lower(): value for name, value in headers.items()}
        return RateFacts(
            used_weight=header_count(lowered.get(USED_WEIGHT_HEADER)),
            retry_after_s=seconds_or_none(lowered.get("retry-after")),
            rate_limited=status == 429,
            banned=status == 418,
        )

    def stream_name(self, series: SeriesKey) -> str:
        return f"{series.symbol.lower()}@kline_{series.timeframe}"

    def stream_path(self, series: Sequence[SeriesKey]) -> str:
        if not series:
            return "/stream"
        return "/stream?streams=" + "/".join(self.stream_name(s) for s in series)

    def login_messages(self) -> list[str]:
        return []

    def subscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._method("SUBSCRIBE", series, request_id)

    def unsubscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._method("UNSUBSCRIBE", series, request_id)

    def _method(self, method: str, series: Sequence[SeriesKey], request_id: int) -> str:
        params = [self.stream_name(s) for s in series]
        return json.dumps({"method": method, "params": params, "id": request_id})

    def parse_frame(self, text: str) -> FrameResult:
        payload = json_or_none(text)
        if not isinstance(payload, dict):
            return _MALFORMED
        if "result" in payload or "code" in payload:
            return _reply(payload)
        stream: Any = None
        if "stream" in payload or "data" in payload:  # combined-stream wrapper
            stream, payload = payload.get("stream"), payload.get("data")
            if not isinstance(stream, str) or not isinstance(payload, dict):
                return _MALFORMED
        if payload.get("e") != "kline":
            return FrameResult(stream=stream)  # another event type: not ours to judge
        try:
            candle, closed = self._event_candle(payload)
        except CodecError:
            return _MALFORMED
        return FrameResult(
            candles=(candle,) if closed else (),
            is_data=True,
            stream=stream or self.stream_name(candle.series),
        )

    def _event_candle(self, event: dict[str, Any]) -> tuple[Candle, bool]:
        k = event.get("k")
        if not isinstance(k, dict):
            raise CodecError("kline event without a `k` object")
        symbol, interval, closed = k.get("s"), k.get("i"), k.get("x")
        if not isinstance(symbol, str) or not symbol:
            raise CodecError("kline symbol")
        if not isinstance(interval, str) or interval not in _INTERVALS:
            raise CodecError("kline interval")
        if not isinstance(closed, bool):
            raise CodecError("kline closed flag")
        series = SeriesKey(self._venue, symbol, interval)
        ts = _open_time(series.tf, k.get("t"))
        fields = (k.get(key) for key in ("o", "h", "l", "c", "v"))
        o, h, low, c, v = (decimal_string(value) for value in fields)
        return Candle(series, ts, o, h, low, c, v), closed


def _row_candle(series: SeriesKey, tf: Timeframe, row: object, index: int) -> Candle:
    # [openTime, "open", "high", "low", "close", "volume", closeTime, ...]
    if not isinstance(row, list) or len(row) < 6:
        raise CodecError(f"klines row {index}: expected an array of at least 6 fields")
    try:
        ts = _open_time(tf, row[0])
        o, h, low, c, v = (decimal_string(value) for value in row[1:6])
    except CodecError as exc:
        raise CodecError(f"klines row {index}: {exc}") from None
    return Candle(series, ts, o, h, low, c, v)


def _open_time(tf: Timeframe, value: object) -> datetime:
    # bool is an int subclass; true is not a timestamp.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CodecError(f"open time {shown(value)} is not a millisecond timestamp")
    return bar_open(tf, from_ms(value))


def _venue_error(status: int, payload: Any) -> VenueError:
    # Error bodies look like {"code": -1121, "msg": "Invalid symbol."}.
    if isinstance(payload, dict):
        code, msg = payload.get("code"), payload.get("msg")
        if isinstance(code, int) and isinstance(msg, str):
            return VenueError(status, code, msg)
    return VenueError(status, None, "no error body")


def _reply(payload: dict[str, Any]) -> FrameResult:
    # {"result": null, "id": 1} or {"code": 2, "msg": "...", "id": 1}
    reply_id = payload.get("id")
    if reply_id is not None and (not isinstance(reply_id, int) or isinstance(reply_id, bool)):
        return _MALFORMED
    if "code" in payload:
        error = venue_words(payload.get("msg", payload["code"]))
        return FrameResult(reply_id=reply_id, error=error)
    return FrameResult(reply_id=reply_id)
