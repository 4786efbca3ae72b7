"""Coinbase Exchange (no key): REST `GET /products/{product_id}/candles`; live bars by polling.

Wire formats as documented at
- https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
  (`granularity` one of 60, 300, 900, 3600, 21600, 86400 seconds "or your request is
  rejected"; `start`/`end` ISO 8601, both or neither; at most 300 candles a request,
  a wider range is rejected; buckets `[time, low, high, open, close, volume]` as JSON
  numbers, `time` the bucket start in Unix seconds, newest first; "No data is
  published for intervals where there are no ticks": sparse),
- https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits (public endpoints: 10
  requests per second per IP, bursts up to 15, a lazy-fill token bucket; over it,
  `429 Too Many Requests`),
- https://docs.cdp.coinbase.com/exchange/rest-api/requests (errors: a 4xx/5xx status
  and a body `{"message": "..."}`).

The Exchange WebSocket feed has no candle channel, so the codec has no stream
(`stream` is None): live bars come from the poll driver, through
`history_request` like any other bar.

Product ids are Coinbase's, e.g. "BTC-USD".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import require_utc
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
from candled.venues.wire import (
    bar_at_seconds,
    closed_by,
    json_array,
    json_number,
    json_or_none,
    rfc3339,
)

LIMITS = VenueLimits(
    page_size=300,  # "The maximum number of data points for a single request is 300 candles"
    request_weight=1,  # public endpoints are limited by request count per IP
    exact_genesis=False,  # nothing answers "first candle at or after t"
    sparse=True,  # "No data is published for intervals where there are no ticks"
    # Public endpoints: 10 requests per second per IP, bursts up to 15, in a token
    # bucket; whatever our bucket (10, refilled at 10/s) lets through fits theirs.
    rate_capacity=10,
    rate_period_s=1.0,
)
# Coinbase accepts exactly these bucket sizes (seconds), one per supported timeframe.
GRANULARITY = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
# Coinbase sends no Retry-After with its 429; its bucket refills in about a second.
_RETRY_AFTER_429_S = 1.0


def candles_path(product_id: str) -> str:
    """`/products/{product_id}/candles`, the id quoted."""
    # A product id is a path segment: nothing in it may start another one.
    return f"/products/{quote(product_id, safe='')}/candles"


class CoinbaseCodec(CodecBase):
    """Coinbase Exchange's product candles over REST; no stream (live bars are polled)."""

    LIMITS = LIMITS
    TIMEFRAMES = GRANULARITY

    def __init__(
        self,
        venue: str = "coinbase",
        credentials: Credentials | None = None,  # market data needs no key
        options: Mapping[str, str] | None = None,
    ) -> None:
        no_options("coinbase", options)
        super().__init__(venue)

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """Candles of the bars opening in [start, end), asked to the bucket."""
        self.check_limit(limit)
        granularity = _granularity(series)
        tf = series.tf
        first, last = tf.ceil(require_utc(start)), tf.add(tf.ceil(require_utc(end)), -1)
        if last < first:
            raise ValueError(f"no bar opens in [{start.isoformat()}, {end.isoformat()})")
        if tf.count_bars(first, tf.next(last)) > limit:
            raise ValueError(
                f"[{start.isoformat()}, {end.isoformat()}) holds more than {limit} bars"
            )
        # The docs do not say whether `end` is inclusive (clients treat it so:
        # ccxt asks start + (limit - 1) * granularity for `limit` bars). Half a
        # bucket past the last wanted open gives exactly [start, end) either way,
        # and keeps the count of buckets under the cap.
        end_param = last + timedelta(seconds=granularity / 2)
        return HttpRequest(
            method="GET",
            path=candles_path(series.symbol),
            params={
                "granularity": str(granularity),
                "start": rfc3339(first),
                "end": rfc3339(end_param),
            },
            weight=LIMITS.request_weight,
        )

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """The closed buckets of an answer, oldest first; `{"message"}` errors as `VenueError`."""
        payload = json_or_none(body)
        if status != 200:
            raise _venue_error(status, payload)
        # Coinbase answers newest first and includes the bucket still in progress.
        rows = enumerate(json_array(payload, "candles"))
        return closed_by((_row_candle(series, series.tf, row, i) for i, row in rows), now)

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """A 429, to be waited out for a second (Coinbase sends no Retry-After)."""
        # Coinbase reports no used weight and bans nobody; over the limit it
        # answers 429, with no Retry-After.
        limited = status == 429
        return RateFacts(
            used_weight=None,
            retry_after_s=_RETRY_AFTER_429_S if limited else None,
            rate_limited=limited,
            banned=False,
        )


def _granularity(series: SeriesKey) -> int:
    try:
        return GRANULARITY[series.timeframe]
    except KeyError:
        raise ValueError(
            f"coinbase has no {series.timeframe} candles; expected one of {', '.join(GRANULARITY)}"
        ) from None


def _row_candle(series: SeriesKey, tf: Timeframe, row: object, index: int) -> Candle:
    # [time, low, high, open, close, volume]: low and high come before open.
    if not isinstance(row, list) or len(row) != 6:
        raise CodecError(f"candles row {index}: expected an array of 6 numbers")
    try:
        ts = bar_at_seconds(tf, row[0])
        low, high, o, c, v = (json_number(value) for value in row[1:6])
    except CodecError as exc:
        raise CodecError(f"candles row {index}: {exc}") from None
    return Candle(series, ts, o, high, low, c, v)


def _venue_error(status: int, payload: Any) -> VenueError:
    # Error bodies look like {"message": "NotFound"}; Coinbase has no error codes.
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return VenueError(status, None, payload["message"])
    return VenueError(status, None, "no error body")
