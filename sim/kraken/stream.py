"""One connection to Kraken's WebSocket v2 `ohlc` channel (`/v2`): method messages
in; acks, snapshots, updates and heartbeats out."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from itertools import islice
from typing import Any

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey
from candled_sim.kraken.rest import HORIZON_ROWS
from candled_sim.kraken.wire import (
    HEARTBEAT,
    INVALID_ARGUMENTS,
    TIMEFRAMES,
    method_ack,
    method_error,
    ohlc_frame,
    status_frame,
    time_text,
)
from candled_sim.personality import SimContext, send_json, sleep_to_tick
from candled_sim.truth import SIM_VENUE


def _subscription(params: object) -> tuple[list[str], int, bool] | None:
    """Symbols, interval and snapshot flag of an `ohlc` (un)subscribe, if well formed."""
    if not isinstance(params, dict) or params.get("channel") != "ohlc":
        return None
    symbols, interval = params.get("symbol"), params.get("interval", 1)
    if not isinstance(symbols, list) or not symbols:
        return None
    if not all(isinstance(s, str) for s in symbols) or interval not in TIMEFRAMES:
        return None
    return symbols, interval, params.get("snapshot", True) is not False


class OhlcStream:
    """One `/v2` connection: method messages in, acks, snapshots, updates and heartbeats out."""

    def __init__(self, ws: web.WebSocketResponse, ctx: SimContext) -> None:
        self._ws = ws
        self._ctx = ctx
        self._truth = ctx.truth
        # series -> open time of the bar it was pushing at the last tick
        self._subscribed: dict[SeriesKey, datetime] = {}
        self._second, self._messages = -1, 0  # incoming messages in the current second

    async def run(self) -> None:
        """Serve the connection until the client leaves."""
        await self._send(status_frame(self._ctx.rng.getrandbits(63)))
        async with asyncio.TaskGroup() as tasks:
            pusher = tasks.create_task(self._push())
            await self._read()
            pusher.cancel()

    async def _send(self, message: dict[str, Any]) -> bool:
        return await send_json(self._ws, message)

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                for answer in self._answer(msg.data):
                    await self._send(answer)

    def _over_limit(self, now: datetime) -> bool:
        second = int(now.timestamp())
        if second != self._second:
            self._second, self._messages = second, 0
        self._messages += 1
        return self._messages > self._ctx.scenario.max_incoming_per_s

    def _answer(self, text: str) -> list[dict[str, Any]]:
        """The messages answering one client message."""
        time_in = self._ctx.clock()
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return [method_error(None, INVALID_ARGUMENTS, None, time_in, self._ctx.clock())]
        method, req_id = request.get("method"), request.get("req_id")
        if self._over_limit(time_in):
            error = "EAPI:Rate limit exceeded"
            return [method_error(method, error, req_id, time_in, self._ctx.clock())]
        if method == "ping":
            return [{"method": "pong", "req_id": req_id, "time_in": time_text(time_in),
                     "time_out": time_text(self._ctx.clock())}]  # fmt: skip
        if method not in ("subscribe", "unsubscribe"):
            return [method_error(method, "Method not found", req_id, time_in, self._ctx.clock())]
        subscription = _subscription(request.get("params"))
        if subscription is None:
            return [method_error(method, INVALID_ARGUMENTS, req_id, time_in, self._ctx.clock())]
        symbols, interval, snapshot = subscription
        answers: list[dict[str, Any]] = []
        for symbol in symbols:  # one answer per symbol, as Kraken documents
            time_out = self._ctx.clock()
            if self._truth.listing(symbol) is None:
                error = f"Currency pair not supported {symbol}"
                answers.append(method_error(method, error, req_id, time_in, time_out, symbol))
                continue
            series = SeriesKey(SIM_VENUE, symbol, TIMEFRAMES[interval])
            result: dict[str, Any] = {"channel": "ohlc", "interval": interval, "symbol": symbol}
            if method == "unsubscribe":
                self._subscribed.pop(series, None)
                answers.append(method_ack(method, result, req_id, time_in, time_out))
                continue
            self._subscribed[series] = series.tf.floor(time_out)
            answers.append(method_ack(method, {**result, "snapshot": snapshot}, req_id,
                                      time_in, time_out))  # fmt: skip
            bars = self._snapshot(series, time_out)
            if snapshot and bars:
                answers.append(ohlc_frame("snapshot", bars, time_out))
        return answers

    def _forming(self, series: SeriesKey, now: datetime) -> list[Candle]:
        """The bar in progress, if it has seen a trade (updates come on trades)."""
        current = series.tf.floor(now)
        published = self._truth.exists(series, current) and self._truth.traded(series, current)
        if not self._truth.listed_by(series.symbol, now) or not published:
            return []
        return [self._truth.partial(series, current, now)]

    def _snapshot(self, series: SeriesKey, now: datetime) -> list[Candle]:
        """The last closed bar with trades, then the one forming."""
        if not self._truth.listed_by(series.symbol, now):
            return []
        before = self._truth.opens_before(series, series.tf.floor(now))
        traded = (ts for ts in islice(before, HORIZON_ROWS) if self._truth.traded(series, ts))
        last = next(traded, None)
        closed = [] if last is None else [self._truth.bar(series, last)]
        return closed + self._forming(series, now)

    async def _push(self) -> None:
        interval = self._ctx.scenario.update_interval_s
        while not self._ws.closed:
            await sleep_to_tick(self._ctx.clock, interval)
            now = self._ctx.clock()
            sent = False
            for series, pushing in list(self._subscribed.items()):
                current = series.tf.floor(now)
                self._subscribed[series] = current
                # Bars closed since the last tick: their last trade's update.
                closed = [self._truth.bar(series, ts)
                          for ts in self._truth.opens(series, pushing, current)
                          if self._truth.traded(series, ts)]  # fmt: skip
                bars = closed + self._forming(series, now)
                if bars and await self._send(ohlc_frame("update", bars, now)):
                    self._ctx.counters.frames_sent += 1
                    sent = True
            if self._subscribed and not sent:
                await self._send(HEARTBEAT)
