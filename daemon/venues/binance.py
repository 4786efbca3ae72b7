"""Binance spot: `GET /api/v3/klines` and the kline WebSocket streams.

Wire formats as documented at
https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints
and https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
(streams named in the connect URL, `/stream?streams=a/b`, or subscribed with
`{"method": "SUBSCRIBE", "params": [...], "id": n}`, each answered with its id;
events in a `{"stream", "data"}` wrapper on `/stream`, raw on `/ws`; a kline's
`x` says whether the bar has closed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from math import isfinite
from typing import Any

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import EPOCH, SUPPORTED, require_utc
from candled.venues.base import (
    CodecBase,
    CodecError,
    Credentials,
    HttpRequest,
    RateFacts,
    VenueError,
    VenueLimits,
    no_options,
)
from candled.venues.stream import (
    Foreign,
    Malformed,
    SessionBase,
    StreamCodecBase,
    StreamEvent,
    StreamLimits,
)
from candled.venues.wire import (
    FAST_MS_BEFORE,
    bar_at_ms,
    decimal_string,
    header_count,
    json_array,
    json_or_none,
    lowered,
    seconds_or_none,
    shown,
    to_ms,
    venue_words,
)

LIMITS = VenueLimits(
    page_size=1000,
    request_weight=2,
    exact_genesis=True,  # startTime=0&limit=1 answers the first bar after listing
    sparse=False,  # Binance publishes zero-volume bars
)
STREAM_LIMITS = StreamLimits(
    streams_per_connection=1024,
    max_connection_age_s=24 * 3600.0,
    max_messages_per_s=5.0,
)
KLINES_PATH = "/api/v3/klines"
USED_WEIGHT_HEADER = "x-mbx-used-weight-1m"
# Binance intervals are exactly the domain's supported timeframes.
_INTERVALS = frozenset(SUPPORTED)
_URL_STREAMS = "?streams="
_MAX_KEYS = 1 << 16  # series keys a stream codec remembers
_ONE_US = timedelta(microseconds=1)


class BinanceCodec(CodecBase):
    """Binance's klines over REST, with its kline stream (`BinanceStream`)."""

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
        self._stream = BinanceStream(venue)

    @property
    def stream(self) -> BinanceStream:
        """The kline streams."""
        return self._stream

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """Klines from `start`, `endTime` one millisecond before `end` (Binance's is inclusive)."""
        self.check_window(start, end, limit)
        return self._klines(
            series, startTime=str(to_ms(start)), endTime=str(to_ms(end) - 1), limit=str(limit)
        )

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        """`startTime=0&limit=1`: the first bar after listing."""
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
        """The closed klines of an answer; `{"code", "msg"}` errors as `VenueError`."""
        payload = json_or_none(body)
        if status != 200:
            raise _venue_error(status, payload)
        return _closed_candles(series, json_array(payload, "klines"), now)

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """The used weight header, Retry-After, 429 (over budget) and 418 (a ban)."""
        named = lowered(headers)
        return RateFacts(
            used_weight=header_count(named.get(USED_WEIGHT_HEADER)),
            retry_after_s=seconds_or_none(named.get("retry-after")),
            rate_limited=status == 429,
            banned=status == 418,
        )


class BinanceSession(SessionBase["BinanceStream"]):
    """One kline stream connection: replies by id, closed klines by `x`."""

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        params = [self.codec.stream_name(s) for s in keys]
        method = "SUBSCRIBE" if subscribe else "UNSUBSCRIBE"
        return json.dumps({"method": method, "params": params, "id": request_id})

    def receive(self, text: str) -> list[StreamEvent]:
        """Replies, kline events (data of ours or foreign), malformed frames."""
        payload = json_or_none(text)
        if not isinstance(payload, dict):
            return [Malformed("not a JSON object")]
        if "result" in payload or "code" in payload:
            # {"result": null, "id": 1} or {"code": 2, "msg": "...", "id": 1}
            reply_id = payload.get("id")
            if reply_id is not None and (
                not isinstance(reply_id, int) or isinstance(reply_id, bool)
            ):
                return [Malformed(f"reply id {shown(reply_id)}")]
            error = venue_words(payload.get("msg", payload["code"])) if "code" in payload else None
            return [self._reply(reply_id, error)]
        stream: Any = None
        if "stream" in payload or "data" in payload:  # combined-stream wrapper
            stream, payload = payload.get("stream"), payload.get("data")
            if not isinstance(stream, str) or not isinstance(payload, dict):
                return [Malformed("combined-stream wrapper")]
        if payload.get("e") != "kline":
            return []  # another event type: not ours to judge
        try:
            candle, closed = self._event_candle(payload)
        except CodecError as e:
            return [Malformed(str(e))]
        if (stream or self.codec.stream_name(candle.series)) not in self._streams:
            return [Foreign(1)]  # a stream being unsubscribed: alive, no longer ours
        return self._data(closed=(candle,) if closed else ())

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
        series = self.codec.series_key(symbol, interval)
        ts = bar_at_ms(series.tf, k.get("t"))
        o, h = decimal_string(k.get("o")), decimal_string(k.get("h"))
        low, c = decimal_string(k.get("l")), decimal_string(k.get("c"))
        v = decimal_string(k.get("v"))
        return Candle(series, ts, o, h, low, c, v), closed


class BinanceStream(StreamCodecBase):
    """The kline streams: named in the connect URL up to a length, the rest
    subscribed by message."""

    LIMITS = STREAM_LIMITS
    SPARSE = BinanceCodec.LIMITS.sparse  # a skipped bar is a lost closing frame
    PATH = "/stream"
    SESSION = BinanceSession

    def __init__(self, venue: str) -> None:
        super().__init__(venue)
        # (symbol, interval) -> its key: each frame names one, thousands a
        # second. Bounded: a venue could name any number of symbols.
        self._keys: dict[tuple[str, str], SeriesKey] = {}

    def series_key(self, symbol: str, interval: str) -> SeriesKey:
        """The series of a kline event's symbol and (valid) interval."""
        key = self._keys.get((symbol, interval))
        if key is None:
            key = SeriesKey(self.venue, symbol, interval)
            if len(self._keys) < _MAX_KEYS:
                self._keys[symbol, interval] = key
        return key

    def stream_name(self, key: SeriesKey) -> str:
        """`<symbol>@kline_<interval>`, the symbol in lower case."""
        return f"{key.symbol.lower()}@kline_{key.timeframe}"

    def connect_path(self, series: Sequence[SeriesKey]) -> str:
        """`/stream?streams=a/b/...` (combined streams), or `/stream` for none."""
        if not series:
            return self.PATH
        return self.PATH + _URL_STREAMS + "/".join(self.stream_name(s) for s in series)

    def in_url(self, series: Sequence[SeriesKey], max_path: int | None) -> int:
        """As many as fit in `max_path` (None: all)."""
        if max_path is None:
            return len(series)
        length, named = len(self.PATH + _URL_STREAMS) - 1, 0
        for key in series:
            length += len(self.stream_name(key)) + 1  # the name and its separator
            if length > max_path:
                break
            named += 1
        return named


def _closed_candles(series: SeriesKey, rows: list[Any], now: datetime) -> list[Candle]:
    """`closed_by(_row_candle(...) for each row)`, with a fast path (a page is
    a thousand rows, a backfill millions): a row of an int open time on the
    fixed-length grid before year 9000 and five decimal strings whose floats
    are finite is read here, its close compared in integer microseconds;
    any other row goes the general way, which raises what it always has."""
    tf = series.tf
    now = require_utc(now)
    now_us = (now - EPOCH) // _ONE_US
    step_ms, origin_ms = tf.step_us // 1000, tf.origin_us // 1000
    closed: list[Candle] = []
    for index, row in enumerate(rows):
        if type(row) is list and len(row) >= 6 and step_ms:
            ms, a, b, c, d, e = row[0], row[1], row[2], row[3], row[4], row[5]
            if (
                type(ms) is int
                and 0 <= ms < FAST_MS_BEFORE
                and not (ms - origin_ms) % step_ms
                and type(a) is str
                and type(b) is str
                and type(c) is str
                and type(d) is str
                and type(e) is str
            ):
                try:
                    o, h, low, cl, v = float(a), float(b), float(c), float(d), float(e)
                except ValueError:
                    pass  # the general way names the field
                else:
                    # A sum of finite floats may overflow: then the general way.
                    if isfinite(o + h + low + cl + v):
                        if (ms + step_ms) * 1000 <= now_us:
                            ts = EPOCH + timedelta(milliseconds=ms)
                            closed.append(Candle(series, ts, o, h, low, cl, v))
                        continue
        candle = _row_candle(series, tf, row, index)
        if tf.close_time(candle.ts) <= now:
            closed.append(candle)
    closed.sort(key=_open_time)
    return closed


def _open_time(candle: Candle) -> datetime:
    return candle.ts


def _row_candle(series: SeriesKey, tf: Timeframe, row: object, index: int) -> Candle:
    # [openTime, "open", "high", "low", "close", "volume", closeTime, ...]
    if not isinstance(row, list) or len(row) < 6:
        raise CodecError(f"klines row {index}: expected an array of at least 6 fields")
    try:
        ts = bar_at_ms(tf, row[0])
        o, h, low, c, v = (decimal_string(value) for value in row[1:6])
    except CodecError as exc:
        raise CodecError(f"klines row {index}: {exc}") from None
    return Candle(series, ts, o, h, low, c, v)


def _venue_error(status: int, payload: Any) -> VenueError:
    # Error bodies look like {"code": -1121, "msg": "Invalid symbol."}.
    if isinstance(payload, dict):
        code, msg = payload.get("code"), payload.get("msg")
        if isinstance(code, int) and isinstance(msg, str):
            return VenueError(status, code, msg)
    return VenueError(status, None, "no error body")
