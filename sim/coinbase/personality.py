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

from aiohttp import web

from candled_sim import http
from candled_sim.coinbase.rest import parse_candles_query, select_candles
from candled_sim.coinbase.wire import RATE_LIMITED, candle_row, refusal
from candled_sim.http import RateLimiter
from candled_sim.personality import SimContext

RATE_PER_S = 10  # public endpoints: requests per second per IP ...
BURST = 15  # ... and in bursts


class CoinbasePersonality:
    """Coinbase Exchange's public candles endpoint."""

    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        self._limiter = RateLimiter(RATE_PER_S, 1.0, burst=BURST)

    def routes(self) -> list[web.RouteDef]:
        """The one REST path: `GET /products/{product_id}/candles`."""
        return [http.get("/products/{product_id}/candles", self._candles)]

    async def _candles(self, request: web.Request) -> web.Response:
        ctx, now = self._ctx, self._ctx.clock()
        if not self._limiter.charge(request, ctx.counters, now).admitted:
            raise refusal(429, RATE_LIMITED)
        product_id = request.match_info["product_id"]
        query = parse_candles_query(product_id, request.query, ctx.truth, now)
        return web.json_response([candle_row(c) for c in select_candles(ctx.truth, query, now)])
