"""One connection to Binance's kline streams: kline pushes, method messages, pings,
and the scenario's stream faults (drops, silence, lost, malformed and foreign frames)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled_sim.binance.wire import kline_event, kline_frame, stream_series
from candled_sim.encoding import epoch_ms
from candled_sim.faults import Dice, Turns, client_gone, fires
from candled_sim.personality import SimContext, next_tick, send_json, send_text, sleep_to_tick
from candled_sim.truth import SIM_VENUE

# Broken frames, sent in turn: not JSON, a field missing, fields of the wrong type.
_MALFORMED = (
    "{not json",
    json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": {"t": 0}}}),
    json.dumps({"e": "kline", "E": 0, "s": "BTCUSDT", "k": {"t": "x", "x": "yes"}}),
)


# Closing frames are encoded ahead of their close: those of the next tick
# all at once, later ones no further ahead than this and at most this many a
# tick per connection (thousands of bars closing together are prepared over
# several ticks, between the updates).
_PREPARE_AHEAD_S = 30.0
_PREPARE_PER_TICK = 250


@dataclass(frozen=True, slots=True)
class _Text:
    """A kline frame encoded ahead: `head + event time + tail`, and its bar's
    close (seconds since the epoch)."""

    head: str
    tail: str
    close_s: float


@dataclass(frozen=True, slots=True)
class _Prepared:
    """The closing frames of a stream for a tick that moves its bar from
    `last` to `current`: the bars and their text."""

    last: datetime
    current: datetime
    frames: list[tuple[Candle, _Text]]


class _Cork:
    """Stands in for a connection's transport while a batch of frames is
    written: they leave in one write (one system call) instead of one each."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()


@contextlib.contextmanager
def _corked(ws: web.WebSocketResponse) -> Iterator[None]:
    """Frames sent on `ws` inside the block are written to its socket at once,
    in order, when the block ends (aiohttp writes each frame on its own)."""
    writer = ws._writer  # aiohttp's WebSocketWriter: no public way to batch
    if writer is None or writer.transport is None or isinstance(writer.transport, _Cork):
        yield
        return
    cork = _Cork(writer.transport)
    writer.transport = cork  # type: ignore[assignment]
    try:
        yield
    finally:
        writer.transport = cork.transport
        if cork.chunks and not cork.transport.is_closing():
            cork.transport.write(b"".join(cork.chunks))


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
        # Stream name -> its series, in subscription order.
        self._streams: dict[str, SeriesKey] = {}
        for name in streams:
            self._subscribe(name)
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
        # Whether any of those can fire: without, a frame is only sent.
        self._faulty = self._lost.enabled or self._malformed.enabled or self._foreign.enabled
        # The exchange has counted this connection already: it is the ws_connections-th.
        self._mute = fires(faults.ws_mute, counters.ws_connections, rng)
        self._opened = clock()
        self._incoming: collections.deque[datetime] = collections.deque()
        # Per stream, its next closing frames, encoded ahead (see `_prepare`).
        self._ready: dict[str, _Prepared] = {}
        self._tick = (0.0, 0.0)  # the tick's clock, in s since the epoch, and perf_counter()

    def _subscribe(self, name: str) -> None:
        series = stream_series(name)
        assert series is not None  # only valid names are subscribed
        self._streams[name] = series

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
                self._subscribe(name)
            else:
                self._streams.pop(name, None)
                self._ready.pop(name, None)
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
            self._tick = (now.timestamp(), time.perf_counter())
            for gone in tracked.keys() - self._streams.keys():
                del tracked[gone]  # a later re-subscription starts afresh
            # Closing frames of every stream go out first, as a venue sends them
            # at the close; the open-bar updates follow.
            live: list[tuple[str, SeriesKey, datetime]] = []
            event_ms = str(epoch_ms(now))
            floors: dict[str, datetime] = {}  # timeframe -> open of the bar holding `now`
            cpu, closed_before = time.process_time(), self._counters.closing_frames_sent
            with _corked(self._ws):
                for name, series in list(self._streams.items()):
                    current = floors.get(series.timeframe)
                    if current is None:
                        current = floors[series.timeframe] = series.tf.floor(now)
                    closing = self._closing(name, series, tracked.get(name), current, now)
                    tracked[name] = current
                    if not silent:
                        live.append((name, series, current))
                        for candle, text in closing:
                            await self._send(name, (candle, True), now, text, event_ms)
            if self._counters.closing_frames_sent > closed_before:
                burst_ms = int((time.process_time() - cpu) * 1000)
                self._counters.closing_burst_cpu_ms[burst_ms] += 1
            # Other connections' closing frames before this one's updates.
            await asyncio.sleep(0)
            truth = self._truth
            with _corked(self._ws):
                for name, series, current in live:
                    if truth.listed_by(series.symbol, now) and truth.exists(series, current):
                        bar = truth.partial(series, current, now)
                        await self._send(name, (bar, False), now)
            self._prepare(tracked, next_tick(self._clock, interval))

    def _closing(
        self,
        name: str,
        series: SeriesKey,
        last: datetime | None,
        current: datetime,
        now: datetime,
    ) -> list[tuple[Candle, _Text | None]]:
        """The bars closed since the last tick (`current`: the bar holding
        `now`), with their frames when prepared."""
        if last is None or last >= current or not self._truth.listed_by(series.symbol, now):
            return []
        prepared = self._ready.get(name)
        if prepared is not None and prepared.last == last and prepared.current == current:
            del self._ready[name]
            return list(prepared.frames)
        truth = self._truth
        return [(truth.bar(series, ts), None) for ts in truth.opens(series, last, current)]

    def _prepare(self, tracked: dict[str, datetime], tick: float) -> None:
        """Encode ahead the closing frames of the bars now forming: all of
        those that close by `tick` (the next one), and up to
        `_PREPARE_PER_TICK` of those closing within `_PREPARE_AHEAD_S` after
        it. At their close they only need sending; the truth is pure, so
        these are the frames the close would make."""
        budget, truth = _PREPARE_PER_TICK, self._truth
        interval = self._scenario.update_interval_s
        # (timeframe, open of the bar forming) -> (the tick's floor that sees
        # its close, whether that is the next tick), or None when it closes too
        # far ahead: shared by the streams of a timeframe, which mostly have
        # the same bar forming.
        spans: dict[tuple[str, datetime], tuple[datetime, bool] | None] = {}
        for name, series in self._streams.items():
            last, ready = tracked.get(name), self._ready.get(name)
            if last is None or (ready is not None and ready.last == last):
                continue
            span_key = (series.timeframe, last)
            if span_key not in spans:
                close_s = series.tf.close_time(last).timestamp()
                # The tick that sees the close: the first on or after it.
                at = datetime.fromtimestamp(math.ceil(close_s / interval) * interval, UTC)
                far = close_s > tick + _PREPARE_AHEAD_S
                spans[span_key] = None if far else (series.tf.floor(at), close_s <= tick)
            span = spans[span_key]
            if span is None or (not span[1] and budget <= 0):
                continue
            current, due = span
            budget -= not due
            frames = []
            for ts in truth.opens(series, last, current):
                bar = truth.bar(series, ts)
                head, tail = kline_frame(bar, True, name if self._combined else None)
                frames.append((bar, _Text(head, tail, series.tf.close_time(ts).timestamp())))
            self._ready[name] = _Prepared(last, current, frames)

    async def _send(
        self,
        name: str,
        frame: tuple[Candle, bool],
        now: datetime,
        text: _Text | None = None,
        event_ms: str = "",
    ) -> None:
        """Send a kline frame (prepared as `text` around `event_ms`, or encoded
        now), with the scenario's faults around it."""
        candle, closed = frame
        if self._faulty:
            if closed and self._lost.roll():
                self._counters.closing_frames_lost += 1
                return
            turn = self._malformed.roll()
            if turn is not None and await self._send_text(_MALFORMED[turn % len(_MALFORMED)]):
                self._counters.malformed_frames_sent += 1
            if self._foreign.roll():
                await self._send_foreign(candle.series.symbol, now)
        if text is not None:
            sent = await self._send_text(text.head + event_ms + text.tail)
        else:
            sent = await self._send_event(name, candle, closed, now)
        if sent:
            self._counters.frames_sent += 1
            self._counters.closing_frames_sent += closed
            if closed:
                close_s = (
                    candle.series.tf.close_time(candle.ts).timestamp()
                    if text is None
                    else text.close_s
                )
                clock_s, perf = self._tick
                late = clock_s + (time.perf_counter() - perf) - close_s
                self._counters.closing_lag_ms[max(0, int(late * 1000))] += 1

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
