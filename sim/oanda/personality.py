"""The OANDA v20 personality: `GET /v3/instruments/{instrument}/candles`.

Every request needs `Authorization: Bearer candled-sim-oanda-token` (`SIM_TOKEN`);
anything else is answered 401. Each client may send the scenario's
`[rest] weight_per_minute` / 60 requests a second (100 by default, OANDA's
recommended rate); more are answered 429 with `Retry-After: 1`. Candles exist
only for bars with a price (sparse: `Truth.traded`), inside the symbol's
sessions (`profile = "FOREX"`: none over the weekend); the bar in progress is
sent with `complete: false`, and so is a closed bar until `settle` after its
close: OANDA completes a candle only when a price after its end arrives, after
a second or two in busy hours and up to tens of seconds in quiet ones
(https://github.com/hootnot/oanda-api-v20/issues/155). `settle` is zero by
default; a scenario sets it (`[oanda] settle`), and so may a test
(`OandaPersonality.settle`).

Parameters as documented
(https://developer.oanda.com/rest-live-v20/instrument-ep/): `granularity` (default S5),
`price` (any of M, B, A; default M), `count` (default 500, at most 5000),
`from`, `to` (a `to` in the future is refused, as on OANDA), `includeFirst`,
`smooth`, `dailyAlignment`, `alignmentTimezone`, `weeklyAlignment`. `from`
includes the candle it falls in, and so does `to`. A `from`..`to` range of
more than 5000 candles is refused like a `count` above 5000.

Limits of the simulation, answered 400 with a message saying so: granularities
without a domain timeframe (S5, M2, H3, ...), `smooth=true`, and day-aligned
granularities aligned other than at 00:00 UTC (weeks: on Monday).
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from candled_sim import http
from candled_sim.http import RateLimiter
from candled_sim.oanda import wire
from candled_sim.oanda.rest import parse_candles_query, select_candles
from candled_sim.personality import SimContext

SIM_TOKEN = "candled-sim-oanda-token"
CANDLES_PATH = "/v3/instruments/{instrument}/candles"


class OandaPersonality:
    """OANDA v20's candles endpoint, behind a bearer token."""

    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        scenario = context.scenario
        self._limiter = RateLimiter(max(1, scenario.weight_per_minute // 60), 1.0)
        # A closed candle is `complete` this long after its close.
        self.settle = timedelta(seconds=scenario.oanda.settle_s)

    def routes(self) -> list[web.RouteDef]:
        """The candles path; every other path and method is answered as OANDA does."""
        return [
            http.route("*", CANDLES_PATH, self._candles),
            http.route("*", "/{tail:.*}", self._not_found),
        ]

    async def _not_found(self, request: web.Request) -> web.Response:
        raise wire.refusal(404, f"The requested path {request.path} was not found")

    async def _candles(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        if request.method != "GET":
            raise wire.refusal(405, f"The method {request.method} is not allowed for this path")
        if request.headers.get("Authorization") != f"Bearer {SIM_TOKEN}":
            raise wire.refusal(401, wire.UNAUTHORIZED)
        now = ctx.clock()
        decision = self._limiter.charge(request, ctx.counters, now)
        if not decision.admitted:
            raise wire.refusal(429, wire.RATE_LIMITED, {"Retry-After": str(decision.retry_after_s)})
        instrument = request.match_info["instrument"]
        query = parse_candles_query(instrument, request.query, ctx.truth, now)
        rows = [
            wire.candlestick(candle, complete, query.components)
            for candle, complete in select_candles(ctx.truth, query, now, self.settle)
        ]
        return web.json_response(wire.candles_body(instrument, query.granularity, rows))
