"""The Binance personality: `/api/v3/klines` and the kline streams (`/stream`, `/ws/...`)."""

from __future__ import annotations

from aiohttp import web

from candled_sim.personality import SimContext, websocket
from candled_sim.rest import RestApi
from candled_sim.stream import StreamSession
from candled_sim.wire import error_body, stream_series

MAX_STREAMS = 1024  # per connection, as on Binance


class BinancePersonality:
    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        self._rest = RestApi(
            context.truth, context.scenario, context.counters, context.clock, context.rng
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            *self._rest.routes(),
            web.get("/stream", self._stream),
            web.get("/ws", self._stream),
            web.get("/ws/{streams:.+}", self._stream),
        ]

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        combined = request.path == "/stream"
        if combined:
            joined = request.query.get("streams", "")
        else:
            joined = request.match_info.get("streams", "")
        streams = [name for name in joined.split("/") if name]
        bad = [name for name in streams if stream_series(name) is None]
        if bad or len(streams) > MAX_STREAMS:
            body = error_body(-1121, f"Invalid stream(s): {bad or len(streams)}")
            return web.json_response(body, status=400)
        ctx = self._ctx
        async with websocket(request, ctx) as ws:
            await StreamSession(
                ws, request, streams, combined, ctx.truth, ctx.scenario, ctx.counters, ctx.clock,
                ctx.rng,
            ).run()  # fmt: skip
        return ws
