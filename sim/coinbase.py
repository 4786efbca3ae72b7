"""The Coinbase Exchange personality: `GET /products/{product_id}/candles`.

As documented at
https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
and https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits:

- `granularity` must be one of 60, 300, 900, 3600, 21600, 86400 (else 400);
- `start` and `end` (ISO 8601) count only together: without both, the range is
  the newest buckets up to now. A bucket is in the range when its start lies in
  [floor(start), end] (the bucket holding `start` may precede it, as the docs
  warn). More than 300 buckets: 400;
- buckets `[time, low, high, open, close, volume]`, newest first, the one still
  in progress included with its values so far; none for a bucket without trades
  (`Truth.traded`);
- an unknown product: 404; every error body is `{"message": ...}`;
- public endpoints take 10 requests per second per IP with bursts up to 15, a
  lazy-fill token bucket; over it: 429 (no Retry-After is documented, none sent).

The error messages for a malformed `start`/`end` are the simulator's wording;
the others are Coinbase's. Faults from the scenario's `[faults]` are Binance's
(`/api/v3/klines`) and do not apply here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from candled.domain import Candle, SeriesKey, Timeframe
from candled_sim.coinbase_wire import (
    GRANULARITIES,
    MAX_CANDLES,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_MANY_BUCKETS,
    UNSUPPORTED_GRANULARITY,
    candle_row,
    error_body,
)
from candled_sim.personality import SimContext
from candled_sim.truth import Truth
from candled_sim.wire import SIM_VENUE

RATE_PER_S = 10.0  # public endpoints: requests per second per IP ...
BURST = 15  # ... and in bursts


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Bucket:
    tokens: float
    filled_at: datetime


class RequestBucket:
    """Coinbase's lazy-fill token bucket, one per client IP: it holds at most
    `burst` tokens, gains `rate_per_s` a second, and each request takes one."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._clients: dict[str, _Bucket] = {}

    def admit(self, client: str, now: datetime) -> bool:
        bucket = self._clients.setdefault(client, _Bucket(float(self._burst), now))
        elapsed = max(0.0, (now - bucket.filled_at).total_seconds())
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.filled_at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class CandlesQuery:
    series: SeriesKey
    first: datetime  # open time of the oldest bucket in range
    last: datetime  # open time of the newest bucket in range


def parse_candles_query(
    product_id: str, query: Mapping[str, str], truth: Truth, now: datetime
) -> CandlesQuery:
    if truth.listing(product_id) is None:
        raise BadRequest(404, NOT_FOUND)
    try:
        timeframe = GRANULARITIES[int(query.get("granularity", ""))]
    except (ValueError, KeyError):
        raise BadRequest(400, UNSUPPORTED_GRANULARITY) from None
    tf = Timeframe.parse(timeframe)
    start, end = query.get("start"), query.get("end")
    if start is None or end is None:  # "both fields are ignored": the newest buckets
        last = tf.floor(now)
        return CandlesQuery(SeriesKey(SIM_VENUE, product_id, timeframe),
                            tf.add(last, 1 - MAX_CANDLES), last)  # fmt: skip
    first, last = tf.floor(_time(start, "start")), tf.floor(_time(end, "end"))
    if last < first:
        raise BadRequest(400, "start must be before end")
    if tf.count_bars(first, tf.next(last)) > MAX_CANDLES:
        raise BadRequest(400, TOO_MANY_BUCKETS)
    return CandlesQuery(SeriesKey(SIM_VENUE, product_id, timeframe), first, last)


def _time(text: str, name: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(400, f"Invalid {name}: expected an ISO 8601 time") from None
    # A time without an offset is taken as UTC.
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def select_candles(truth: Truth, query: CandlesQuery, now: datetime) -> list[Candle]:
    """The traded buckets in range that have opened by `now`, newest first."""
    series, tf = query.series, query.series.tf
    stop = min(tf.next(query.last), tf.next(tf.floor(now)))
    return [
        truth.bar(series, ts) if tf.close_time(ts) <= now else truth.partial(series, ts, now)
        for ts in reversed(list(truth.opens(series, query.first, stop)))
        if truth.traded(series, ts)
    ]


class CoinbasePersonality:
    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        self._bucket = RequestBucket(RATE_PER_S, BURST)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/products/{product_id}/candles", self._candles)]

    async def _candles(self, request: web.Request) -> web.Response:
        ctx, now = self._ctx, self._ctx.clock()
        ctx.counters.weight_used += 1
        if not self._bucket.admit(request.remote or "?", now):
            ctx.counters.sent_429 += 1
            return web.json_response(error_body(RATE_LIMITED), status=429)
        try:
            query = parse_candles_query(
                request.match_info["product_id"], request.query, ctx.truth, now
            )
        except BadRequest as exc:
            return web.json_response(error_body(exc.message), status=exc.status)
        rows = [candle_row(c) for c in select_candles(ctx.truth, query, now)]
        return web.json_response(rows)
