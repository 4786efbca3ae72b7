"""One connection to Binance's kline streams: kline pushes, method messages, pings,
and the scenario's stream faults (drops, silence, lost, malformed and foreign frames)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from datetime import datetime
from typing import Any

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled_sim.binance.wire import kline_event, stream_series
from candled_sim.faults import Dice, Turns, client_gone, fires
from candled_sim.personality import SimContext, send_json, send_text, sleep_to_tick
from candled_sim.truth import SIM_VENUE

# Broken frames, sent in turn: not JSON, a field missing, fields of the wrong type.
_MALFORMED = (
    "{not json",
    json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": {"t": 0}}}),
    json.dumps({"e": "kline", "E": 0, "s": "BTCUSDT", "k": {"t": "x", "x": "yes"}}),
)


class StreamSession:
    """One `/stream` or `/ws` connection: serves its subscribed kline streams
    (combined: each event wrapped as `{"stream": ..., "data": ...}`)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        streams: list[str],
        combined: bool,
        ctx: SimContext,
    ) -> None:
        self._ws = ws
        self._request = request
        self._streams = dict.fromkeys(streams)  # ordered set
        self._combined = combined
        self._truth = ctx.truth
        self._scenario = scenario = ctx.scenario
        self._counters = counters = ctx.counters
        self._clock = clock = ctx.clock
        rng = ctx.rng
        faults = scenario.faults
        self._lost = Dice(faults.lost_closing_frames, rng)
        self._malformed = Turns(Dice(faults.malformed_frames, rng))
        self._foreign = Dice(faults.foreign_frames, rng)
        # The exchange has counted this connection already: it is the ws_connections-th.
        self._mute = fires(faults.ws_mute, counters.ws_connections, rng)
        self._opened = clock()
        self._incoming: collections.deque[datetime] = collections.deque()

    async def run(self) -> None:
        """Serve the connection until the client leaves or a fault or age ends it."""
        if self._mute:
            self._counters.ws_mute += 1
            # Not even read: reading would answer the client's pings and close.
            await client_gone(self._request)
            return
        async with asyncio.TaskGroup() as tasks:
            pusher = tasks.create_task(self._push())
            pinger = tasks.create_task(self._ping())
            await self._read()
            pusher.cancel()
            pinger.cancel()

    def _age_s(self) -> float:
        return (self._clock() - self._opened).total_seconds()

    def _silent(self) -> bool:
        faults = self._scenario.faults
        if faults.ws_idle_after_s is None:
            return False
        return 0 <= self._age_s() - faults.ws_idle_after_s < faults.ws_idle_duration_s

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if self._over_message_limit():
                await self._ws.close(code=1008, message=b"Too many requests")
                return
            await send_json(self._ws, self._method(msg.data))

    def _over_message_limit(self) -> bool:
        now = self._clock()
        self._incoming.append(now)
        while (now - self._incoming[0]).total_seconds() >= 1.0:
            self._incoming.popleft()
        return len(self._incoming) > self._scenario.max_incoming_per_s

    def _method(self, text: str) -> dict[str, Any]:
        try:
            request = json.loads(text)
        except ValueError as exc:
            return {"code": 3, "msg": f"Invalid JSON: {exc}"}
        if not isinstance(request, dict) or "method" not in request:
            return {"code": 2, "msg": "Invalid request: missing field `method`"}
        method, params, request_id = request["method"], request.get("params", []), request.get("id")
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(self._streams), "id": request_id}
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return {
                "code": 2,
                "msg": f"Invalid request: unknown variant {method}, expected one of "
                "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`",
                "id": request_id,
            }
        if not isinstance(params, list):
            return {"code": 2, "msg": "Invalid request: params must be a list", "id": request_id}
        bad = [p for p in params if not isinstance(p, str) or stream_series(p) is None]
        if bad:
            return {"code": 2, "msg": f"Invalid request: invalid streams {bad}", "id": request_id}
        for name in params:
            if method == "SUBSCRIBE":
                self._streams[name] = None
            else:
                self._streams.pop(name, None)
        return {"result": None, "id": request_id}

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._scenario.ping_interval_s)
            if self._silent() and not self._scenario.faults.ws_idle_pings:
                continue
            with contextlib.suppress(ConnectionError):
                await self._ws.ping(b"sim")
                self._counters.pings_sent += 1

    async def _push(self) -> None:
        interval = self._scenario.update_interval_s
        faults = self._scenario.faults
        tracked: dict[str, datetime] = {}  # stream -> open time of the bar it is pushing
        was_silent = False
        while not self._ws.closed:
            await sleep_to_tick(self._clock, interval)
            age = self._age_s()
            if faults.ws_drop_after_s is not None and age >= faults.ws_drop_after_s:
                self._drop()
                return
            if age >= self._scenario.max_connection_age_s:
                await self._ws.close(code=1001, message=b"connection too old")
                return
            silent = self._silent()
            self._counters.ws_idle_periods += silent and not was_silent
            was_silent = silent
            now = self._clock()
            for gone in tracked.keys() - self._streams.keys():
                del tracked[gone]  # a later re-subscription starts afresh
            # Closing frames of every stream go out first, as a venue sends them
            # at the close; the open-bar updates follow.
            live: list[tuple[str, SeriesKey]] = []
            for name in list(self._streams):
                series = stream_series(name)
                assert series is not None  # only valid names are subscribed
                closing = self._closing(series, tracked.get(name), now)
                tracked[name] = series.tf.floor(now)
                if not silent:
                    live.append((name, series))
                    for candle in closing:
                        await self._send(name, (candle, True), now)
            for name, series in live:
                current, truth = series.tf.floor(now), self._truth
                if truth.listed_by(series.symbol, now) and truth.exists(series, current):
                    await self._send(name, (truth.partial(series, current, now), False), now)

    def _closing(self, series: SeriesKey, last: datetime | None, now: datetime) -> list[Candle]:
        """The bars closed since the last tick."""
        current = series.tf.floor(now)
        if last is None or last >= current or not self._truth.listed_by(series.symbol, now):
            return []
        return [self._truth.bar(series, ts) for ts in self._truth.opens(series, last, current)]

    async def _send(self, name: str, frame: tuple[Candle, bool], now: datetime) -> None:
        candle, closed = frame
        if closed and self._lost.roll():
            self._counters.closing_frames_lost += 1
            return
        turn = self._malformed.roll()
        if turn is not None and await self._send_text(_MALFORMED[turn % len(_MALFORMED)]):
            self._counters.malformed_frames_sent += 1
        if self._foreign.roll():
            await self._send_foreign(candle.series.symbol, now)
        if await self._send_event(name, candle, closed, now):
            self._counters.frames_sent += 1
            self._counters.closing_frames_sent += closed

    async def _send_foreign(self, symbol: str, now: datetime) -> None:
        """The last closed bar of a stream of `symbol` this connection did not
        subscribe to: a real bar, but not one the client asked for."""
        for timeframe in SUPPORTED:
            name = f"{symbol.lower()}@kline_{timeframe}"
            if name in self._streams:
                continue
            series = SeriesKey(SIM_VENUE, symbol, timeframe)
            last = series.tf.add(series.tf.floor(now), -1)
            if not (self._truth.listed_by(symbol, now) and self._truth.exists(series, last)):
                return
            if await self._send_event(name, self._truth.bar(series, last), True, now):
                self._counters.foreign_frames_sent += 1
            return

    async def _send_event(self, name: str, candle: Candle, closed: bool, now: datetime) -> bool:
        event = kline_event(candle, closed, now)
        payload = {"stream": name, "data": event} if self._combined else event
        return await self._send_text(json.dumps(payload))

    async def _send_text(self, text: str) -> bool:
        return await send_text(self._ws, text)

    def _drop(self) -> None:
        """Cut the connection without a close frame, as a network failure would."""
        self._counters.ws_drops += 1
        if self._request.transport is not None:
            self._request.transport.abort()
