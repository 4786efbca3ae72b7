"""The Binance personality: `/api/v3/klines`, `/api/v3/ping`, `/api/v3/time` and the
kline streams (`/stream`, `/ws/...`), with the scenario's `[faults]`.

Requests weigh against `[rest] weight_per_minute` per client IP and clock
minute (`X-MBX-USED-WEIGHT-1M` on every answer); over it: 429 with Retry-After,
then 418 IP bans for a client that keeps going (`candled_sim.http.RateLimiter`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from candled_sim import http
from candled_sim.binance.rest import KLINES_WEIGHT, parse_klines_query, select_klines
from candled_sim.binance.stream import StreamSession
from candled_sim.binance.wire import kline_row, refusal, stream_series
from candled_sim.encoding import epoch_ms
from candled_sim.faults import (
    Burst,
    Dice,
    Turns,
    cdn_error_page,
    client_gone,
    cut_mid_body,
    hang_up,
    not_json,
    padded_json,
)
from candled_sim.http import Decision, HttpError, RateLimiter
from candled_sim.personality import SimContext, websocket

MAX_STREAMS = 1024  # per connection, as on Binance
_INTERNAL_ERROR = (-1001, "Internal error; unable to process your request.")


class BinancePersonality:
    """Binance's spot market data: klines over REST, kline streams, faults on klines."""

    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        scenario = context.scenario
        self._limiter = RateLimiter(
            scenario.weight_per_minute, 60.0, ban_s=scenario.ban_s, max_ban_s=scenario.max_ban_s
        )
        rng = context.rng
        self._faults = faults = scenario.faults
        self._errors = Burst(Dice(faults.http_errors, rng), faults.http_error_burst)
        self._resets = Dice(faults.connection_resets, rng)
        self._hangs = Dice(faults.never_answers, rng)
        self._html = Turns(Dice(faults.html_errors, rng))
        self._slow = Dice(faults.slow_responses, rng)
        self._non_json = Turns(Dice(faults.non_json, rng))
        self._truncated = Turns(Dice(faults.truncated_bodies, rng))
        self._oversized = Dice(faults.oversized_bodies, rng)

    def routes(self) -> list[web.RouteDef]:
        """The REST paths and the stream endpoints."""
        return [
            http.get("/api/v3/klines", self._klines),
            http.get("/api/v3/ping", self._ping),
            http.get("/api/v3/time", self._time),
            http.get("/stream", self._stream),
            http.get("/ws", self._stream),
            http.get("/ws/{streams:.+}", self._stream),
        ]

    async def _ping(self, request: web.Request) -> web.Response:
        return self._answer(request, 1, lambda: {})

    async def _time(self, request: web.Request) -> web.Response:
        return self._answer(request, 1, lambda: {"serverTime": epoch_ms(self._ctx.clock())})

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        decision = self._admit(request, KLINES_WEIGHT)
        faults, counters, now = self._faults, self._ctx.counters, self._ctx.clock()
        if faults.storm_at(now):
            counters.storm_errors += 1
            raise refusal(*_INTERNAL_ERROR, faults.storm_status, _weight(decision))
        if self._resets.roll():
            counters.connection_resets += 1
            hang_up(request)
            return web.Response()  # goes nowhere: the connection is gone
        if self._hangs.roll():
            counters.never_answered += 1
            await client_gone(request)
            return web.Response()  # goes nowhere: the client has given up
        if self._errors.roll():
            counters.http_errors_injected += 1
            raise refusal(*_INTERNAL_ERROR, faults.http_error_status, _weight(decision))
        if (turn := self._html.roll()) is not None:
            counters.html_errors += 1
            statuses = faults.html_error_statuses
            return cdn_error_page(statuses[turn % len(statuses)])
        if self._slow.roll():
            counters.slow_responses += 1
            await asyncio.sleep(faults.slow_delay_s)
        try:
            query = parse_klines_query(request.query, self._ctx.truth)
        except HttpError as exc:
            return exc.response(_weight(decision))
        candles = select_klines(self._ctx.truth, query, self._ctx.clock())
        return await self._page(request, [kline_row(c) for c in candles], decision)

    async def _page(
        self, request: web.Request, rows: list[list[Any]], decision: Decision
    ) -> web.StreamResponse:
        """A klines page, or what a broken venue makes of it."""
        counters, headers = self._ctx.counters, _weight(decision)
        if (turn := self._non_json.roll()) is not None:
            counters.non_json += 1
            return not_json(turn, headers)
        if (turn := self._truncated.roll()) is not None:
            counters.truncated_bodies += 1
            body = json.dumps(rows).encode()
            if turn % 2 == 0:  # a complete answer holding half the JSON
                return web.Response(body=body[: len(body) // 2], headers=headers,
                                    content_type="application/json")  # fmt: skip
            return await cut_mid_body(request, body, headers)
        if self._oversized.roll():
            counters.oversized_bodies += 1
            return await padded_json(request, self._faults.oversized_size, headers)
        return web.json_response(rows, headers=headers)

    def _answer(self, request: web.Request, weight: int, body: Callable[[], Any]) -> web.Response:
        decision = self._admit(request, weight)
        return web.json_response(body(), headers=_weight(decision))

    def _admit(self, request: web.Request, weight: int) -> Decision:
        """Charge the request's weight; over budget or banned: the refusal, raised."""
        decision = self._limiter.charge(request, self._ctx.counters, self._ctx.clock(), weight)
        if decision.status == 429:
            msg = "Too many requests; please use WebSocket Streams for live updates."
            raise refusal(-1003, msg, 429, _weight(decision))
        if not decision.admitted:
            msg = "Way too many requests; IP banned. Please use WebSocket Streams."
            raise refusal(-1003, msg, decision.status, _weight(decision))
        return decision

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        combined = request.path == "/stream"
        if combined:
            joined = request.query.get("streams", "")
        else:
            joined = request.match_info.get("streams", "")
        streams = [name for name in joined.split("/") if name]
        bad = [name for name in streams if stream_series(name) is None]
        if bad or len(streams) > MAX_STREAMS:
            raise refusal(-1121, f"Invalid stream(s): {bad or len(streams)}")
        async with websocket(request, self._ctx) as ws:
            await StreamSession(ws, request, streams, combined, self._ctx).run()
        return ws


def _weight(decision: Decision) -> dict[str, str]:
    """The headers Binance reports its rate limit in."""
    headers = {"X-MBX-USED-WEIGHT-1M": str(decision.used_weight)}
    if decision.retry_after_s is not None:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers
