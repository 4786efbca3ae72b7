"""The Alpaca market data v2 personality: stock bars over REST, minute bars on the stream.

Credentials: the sim accepts one fixed key pair, `wire.SIM_KEY` / `wire.SIM_SECRET`
("candled-sim-alpaca-key" / "candled-sim-alpaca-secret"). REST requests need
them in `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` (else 403 `{"message":
"forbidden"}`); the stream needs them in its auth message (else 402 "auth failed").

REST, as documented (alpaca-docs' historical.md, cited in `wire`): `GET /v2/stocks/bars`
(`symbols`, comma separated) and `GET /v2/stocks/{symbol}/bars`, with
`timeframe` (required), `start` (default: the start of the current UTC day),
`end` (default: now; both inclusive), `limit` (1-10000, default 1000), `feed`
(iex or sip: the same truth), `adjustment` (raw, split, dividend, all: the truth
has no corporate actions), `sort` (asc, desc) and `page_token`. Answers hold
bars only for periods with trades inside the symbol's sessions (sparse:
`Truth.traded`), the bar in progress included with its values so far; symbols
without bars (unknown ones too) are left out of the multi-symbol answer. Bars go
symbol by symbol, then by time. When a page is full, `next_page_token` names its
last bar and the next request continues after it (also when nothing follows:
Alpaca says only that there "may be more data"). Alpaca "may return less [than
`limit`], even if there are more available data points" (the docs' `limit`):
`AlpacaPersonality.page_bars` caps every page so, a token on each page it cuts
short; `endless_pages` puts a fresh token on every page, the last too (a venue
whose pages never end). Bad values are answered 422 with
`{"code": 42210000, "message": ...}`, a request without `symbols` or `timeframe`
or with an unknown parameter 400. Each client may send `min([rest]
weight_per_minute, 200)` requests a clock minute (Alpaca's Basic plan); more get
429; every answer carries `X-RateLimit-Limit/-Remaining/-Reset`. Timeframes the
truth has no grid for (2Hour, 1Week, ...) are answered 422 saying so.

Stream `/v2/iex` or `/v2/sip` (alpaca-docs' realtime.md): `[{"T":"success","msg":"connected"}]`
on connect; the client has `AUTH_TIMEOUT_S` to authenticate (404 "auth timeout");
one authenticated connection per key and feed (406 "connection limit exceeded",
then closed: "the number of connections to a single endpoint ... is 1"); a feed
outside the key's plan (`AlpacaPersonality.feeds`) is refused at login (409
"insufficient subscription"); subscribe before auth: 401. `bars` and
`updatedBars` take symbols or "*"; a subscription past `symbol_limit` symbols
is refused (405, the subscription unchanged), a channel of another stream
(`orderbooks`, `news`) too (410); after every (un)subscribe the whole
subscription is sent. `fault_streams(code)` tells every logged-in connection
of an error: 407 "slow client" (then closed, as Alpaca drops slow readers) or
500 "internal error" (left open). Just after each minute closes, the
minute's bars of all subscribed symbols go out in one frame (`"T": "b"`; none for
a minute without trades or outside the sessions). About one traded minute in
four (`corrected`) gets a late trade: its "b" carries a smaller volume, and
`correction_delay_s` (30 s, as on Alpaca) later the corrected bar goes to
`updatedBars` subscribers (`"T": "u"`, the truth's final values). Faults from the
scenario's `[faults]` are Binance's and do not apply here.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from candled_sim import http
from candled_sim.alpaca import wire
from candled_sim.alpaca.rest import beyond, parse_bars_query, select_bars
from candled_sim.alpaca.stream import BarStream
from candled_sim.http import HttpError, RateLimiter
from candled_sim.personality import SimContext, websocket

# Basic plan (https://alpaca.markets/support/usage-limit-api-calls)
REQUESTS_PER_MINUTE = 200


class AlpacaPersonality:
    """Alpaca's stock bars over REST and its minute-bar stream, behind one key pair.

    The key's plan and the venue's quirks are attributes, set from the
    scenario's `[alpaca]` table and changeable by tests at any time.
    """

    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        knobs = context.scenario.alpaca
        self._limiter = RateLimiter(
            min(context.scenario.weight_per_minute, REQUESTS_PER_MINUTE), 60.0
        )
        # (key, feed) of the authenticated connections: one each (406 for another).
        self.authenticated: set[tuple[str, str]] = set()
        self.feeds = set(knobs.feeds)  # the feeds the key's plan includes (others: 409)
        self.symbol_limit = knobs.symbol_limit  # symbols a connection may subscribe (405)
        self._streams: set[BarStream] = set()  # open stream connections
        self.correction_delay_s = knobs.correction_delay_s  # "u" bars this long after the "b"
        # Alpaca "may return less [than `limit`], even if there are more available
        # data points": a page holds at most this many bars whatever `limit`
        # asks (None: `limit` alone), with a `next_page_token` when it is cut short.
        self.page_bars = knobs.page_bars
        # A misbehaving venue: every page carries a token, the last one too, and
        # following it gives an empty page with a fresh token, for ever.
        self.endless_pages = knobs.endless_pages

    def routes(self) -> list[web.RouteDef]:
        """The two bars paths and the stream endpoint."""
        return [
            http.get("/v2/stocks/bars", self._multi_bars),
            http.get("/v2/stocks/{symbol}/bars", self._single_bars),
            http.get("/v2/{feed}", self._stream),
        ]

    async def _multi_bars(self, request: web.Request) -> web.Response:
        symbols = request.query.get("symbols", "")
        return await self._bars(request, symbols.split(",") if symbols else [], single=False)

    async def _single_bars(self, request: web.Request) -> web.Response:
        if "symbols" in request.query:
            raise wire.refusal(400, "unexpected parameter: symbols")
        return await self._bars(request, [request.match_info["symbol"]], single=True)

    async def _bars(self, request: web.Request, symbols: list[str], single: bool) -> web.Response:
        ctx = self._ctx
        headers = request.headers
        if headers.get("APCA-API-KEY-ID") != wire.SIM_KEY or (
            headers.get("APCA-API-SECRET-KEY") != wire.SIM_SECRET
        ):
            raise wire.refusal(403, wire.FORBIDDEN)
        now = ctx.clock()
        decision = self._limiter.charge(request, ctx.counters, now)
        rate = {"X-RateLimit-Limit": str(self._limiter.budget),
                "X-RateLimit-Remaining": str(decision.remaining),
                "X-RateLimit-Reset": str(int(decision.reset.timestamp()))}  # fmt: skip
        if not decision.admitted:
            raise wire.refusal(429, wire.TOO_MANY_REQUESTS, rate)
        try:
            query = parse_bars_query(request.query, symbols, now)
        except HttpError as exc:
            return exc.response(rate)
        if self.page_bars is not None:
            query = dataclasses.replace(query, limit=min(query.limit, self.page_bars))
        page, last = select_bars(ctx.truth, query, now)
        if last is None and self.endless_pages:
            last = beyond(query)
        token = None if last is None else wire.page_token(last[0], query.tf, last[1])
        bars = {symbol: [wire.bar(c) for c in candles] for symbol, candles in page.items()}
        if single:
            body = wire.single_bars_body(symbols[0], bars.get(symbols[0], []), token)
        else:
            body = wire.multi_bars_body(bars, token)
        return web.json_response(body, headers=rate)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["feed"] not in wire.FEEDS:
            raise web.HTTPNotFound()
        async with websocket(request, self._ctx) as ws:
            stream = BarStream(ws, self._ctx, self, request.match_info["feed"])
            self._streams.add(stream)
            try:
                await stream.run()
            finally:
                self._streams.discard(stream)
                if stream.key is not None:
                    self.authenticated.discard((stream.key, stream.feed))
        return ws

    async def fault_streams(self, code: int) -> int:
        """Send stream error `code` to every logged-in connection; 407 "slow
        client" then closes each. Returns how many were told."""
        told = [s for s in self._streams if s.key is not None]
        for stream in told:
            await stream.fault(code, close=code == 407)
        return len(told)
