"""The Kraken personality: `GET /0/public/OHLC` and the WebSocket v2 `ohlc` channel (`/v2`).

As Kraken does (https://docs.kraken.com/api-reference/market-data/get-ohlc-data):
OHLC answers with the newest 720 entries only, whatever `since` says, and the
last entry is always the bar still forming (with `settle`, the scenario's
`[kraken] settle`, a bar that closed less than `settle` ago: not committed
yet); `since` keeps the entries opening after it. Bars without trades
(`truth.traded`) are not published at all, on REST or on the stream. Every
answer is HTTP 200, failures included: `{"error": ["EQuery:Unknown asset
pair"]}`, and over the request budget `{"error": ["EGeneral:Too many
requests"]}` (a client that keeps asking stays refused longer, as Kraken
warns: the rate limiter's bans, answered like any refusal). Pairs are named as
in the scenario, e.g. "BTC/USD"; with `assetVersion=1` the answer uses that
name, else the name without its slash (a stand-in for Kraken's internal pair
names).

The stream (https://docs.kraken.com/api/docs/websocket-v2/ohlc) sends a status
message on connect; each subscribed symbol gets an ack and a snapshot (the last
closed bar and the one forming); every `update_interval` the bars that closed
since the last tick go out once more with their final values (the update of
their last trade) followed by the forming bar so far; a tick with nothing to
send sends a heartbeat. Nothing says a bar is closed: a later bar does.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from candled_sim import http
from candled_sim.encoding import epoch_s
from candled_sim.http import RateLimiter
from candled_sim.kraken.rest import OhlcRequest, parse_ohlc_query, select_ohlc
from candled_sim.kraken.stream import OhlcStream
from candled_sim.kraken.wire import TOO_MANY_REQUESTS, ohlc_answer, refusal
from candled_sim.personality import SimContext, websocket

# About one public request a second (Kraken's support article 206548367,
# https://support.kraken.com/hc/en-us/articles/206548367);
# a scenario's `[rest] weight_per_minute` may make it tighter, never looser.
REQUESTS_PER_MINUTE = 60


class KrakenPersonality:
    """Kraken's public OHLC endpoint and its WebSocket v2 `ohlc` channel."""

    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        scenario = context.scenario
        self._limiter = RateLimiter(
            min(scenario.weight_per_minute, REQUESTS_PER_MINUTE), 60.0,
            ban_s=scenario.ban_s, max_ban_s=scenario.max_ban_s, ban_status=429,
        )  # fmt: skip
        self.ohlc_requests: list[OhlcRequest] = []  # answered ones, oldest first
        # OHLC's last entry is uncommitted: a bar stays there this long after
        # its close (zero: committed at the close). The stream is not delayed.
        self.settle = timedelta(seconds=scenario.kraken.settle_s)

    def routes(self) -> list[web.RouteDef]:
        """The REST path and the stream endpoint."""
        return [http.get("/0/public/OHLC", self._ohlc), http.get("/v2", self._stream)]

    async def _ohlc(self, request: web.Request) -> web.Response:
        ctx, now = self._ctx, self._ctx.clock()
        if not self._limiter.charge(request, ctx.counters, now).admitted:
            raise refusal(TOO_MANY_REQUESTS)  # Kraken's "429", in an HTTP 200 body
        query = parse_ohlc_query(request.query, ctx.truth)
        series = query.series
        self.ohlc_requests.append(OhlcRequest(series.symbol, series.timeframe, query.since, now))
        rows = select_ohlc(ctx.truth, series, now, self.settle)
        committed, forming = rows[:-1], rows[-1:]
        if query.since is not None:
            committed = [c for c in committed if epoch_s(c.ts) > query.since]
        # `last`: the cursor for polling committed bars, the newest one's time.
        last = epoch_s(rows[-2].ts if len(rows) > 1 else rows[-1].ts) if rows else 0
        pair = series.symbol if query.display_names else series.symbol.replace("/", "")
        return web.json_response(ohlc_answer(pair, committed + forming, last))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        async with websocket(request, self._ctx) as ws:
            await OhlcStream(ws, self._ctx).run()
        return ws
