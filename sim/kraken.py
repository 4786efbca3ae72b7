"""The Kraken personality: `GET /0/public/OHLC` and the WebSocket v2 `ohlc` channel (`/v2`).

As Kraken does (https://docs.kraken.com/api-reference/market-data/get-ohlc-data):
OHLC answers with the newest 720 entries only, whatever `since` says, and the
last entry is always the bar still forming (with `settle`, a bar that closed
less than `settle` ago: not committed yet); `since` keeps the entries opening
after it. Bars without trades (`truth.traded`) are not published at all, on
REST or on the stream. Every answer is HTTP 200, failures included:
`{"error": ["EQuery:Unknown asset pair"]}`, and over the request budget
`{"error": ["EGeneral:Too many requests"]}` (a client that keeps asking stays
refused longer, as Kraken warns). Pairs are named as in the scenario, e.g.
"BTC/USD"; with `assetVersion=1` the answer uses that name, else the name
without its slash (a stand-in for Kraken's internal pair names).

The stream (https://docs.kraken.com/api/docs/websocket-v2/ohlc) sends a status
message on connect; each subscribed symbol gets an ack and a snapshot (the last
closed bar and the one forming); every `update_interval` the bars that closed
since the last tick go out once more with their final values (the update of
their last trade) followed by the forming bar so far; a tick with nothing to
send sends a heartbeat. Nothing says a bar is closed: a later bar does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey
from candled_sim.kraken_wire import (
    HEARTBEAT,
    TIMEFRAMES,
    error_answer,
    method_ack,
    method_error,
    ohlc_answer,
    ohlc_frame,
    rfc3339,
    seconds,
    status_frame,
)
from candled_sim.limiter import WeightLimiter
from candled_sim.personality import SimContext, send_json, websocket
from candled_sim.truth import Truth
from candled_sim.wire import SIM_VENUE

HORIZON_ROWS = 720  # entries an OHLC answer holds at most, the forming bar included
# About one public request a second (support.kraken.com article 206548367);
# a scenario's `[rest] weight_per_minute` may make it tighter, never looser.
REQUESTS_PER_MINUTE = 60
_TICK_LAG_S = 0.02  # push just after a boundary, when the bar has closed
_INTEGER = re.compile(r"^-?[0-9]{1,20}$")
INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
UNKNOWN_PAIR = "EQuery:Unknown asset pair"
TOO_MANY_REQUESTS = "EGeneral:Too many requests"


class BadQuery(Exception):
    """A request Kraken refuses; the message is its error string."""


@dataclass(frozen=True, slots=True)
class OhlcQuery:
    series: SeriesKey
    since: int | None  # Unix seconds: entries opening after it
    display_names: bool  # assetVersion=1: the answer names the pair as asked


@dataclass(frozen=True, slots=True)
class OhlcRequest:
    """One OHLC request the sim answered, for tests to assert on."""

    symbol: str
    timeframe: str
    since: int | None
    at: datetime


def parse_ohlc_query(query: Mapping[str, str], truth: Truth) -> OhlcQuery:
    pair, interval = query.get("pair", ""), query.get("interval", "1")
    if not pair:
        raise BadQuery(INVALID_ARGUMENTS)
    if truth.listing(pair) is None:
        raise BadQuery(UNKNOWN_PAIR)
    if not interval.isdigit() or int(interval) not in TIMEFRAMES:
        raise BadQuery(INVALID_ARGUMENTS)
    since = query.get("since")
    if since is not None and not _INTEGER.match(since):
        raise BadQuery(INVALID_ARGUMENTS)
    if query.get("assetVersion", "1") != "1":  # the only version Kraken has
        raise BadQuery(INVALID_ARGUMENTS)
    return OhlcQuery(
        series=SeriesKey(SIM_VENUE, pair, TIMEFRAMES[int(interval)]),
        since=None if since is None else int(since),
        display_names="assetVersion" in query,
    )


def select_ohlc(
    truth: Truth, series: SeriesKey, now: datetime, settle: timedelta = timedelta(0)
) -> list[Candle]:
    """The newest 720 entries, oldest first: traded bars, then the uncommitted
    one: the bar forming, or, until `settle` after a close, the bar that closed
    (its values may still change; the next bar is not listed yet)."""
    listed = truth.listing(series.symbol)
    if listed is None or listed > now:
        return []
    current = max(series.tf.floor(now - settle), series.tf.floor(listed))
    # The forming bar "will always be present", traded or not.
    rows = [truth.partial(series, current, now)]
    traded = (ts for ts in truth.opens_before(series, current) if truth.traded(series, ts))
    rows += (truth.bar(series, ts) for ts in islice(traded, HORIZON_ROWS - 1))
    return rows[::-1]


class KrakenPersonality:
    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        scenario = context.scenario
        budget = min(scenario.weight_per_minute, REQUESTS_PER_MINUTE)
        self._limiter = WeightLimiter(budget, scenario.ban_s, scenario.max_ban_s)
        self.ohlc_requests: list[OhlcRequest] = []  # answered ones, oldest first
        # OHLC's last entry is uncommitted: a bar stays there this long after
        # its close (zero: committed at the close). The stream is not delayed.
        self.settle = timedelta(0)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/0/public/OHLC", self._ohlc), web.get("/v2", self._stream)]

    async def _ohlc(self, request: web.Request) -> web.Response:
        ctx, now = self._ctx, self._ctx.clock()
        decision = self._limiter.admit(request.remote or "?", 1, now)
        ctx.counters.weight_used += 1
        ctx.counters.requests_during_ban += decision.during_ban
        if decision.status != 200:
            ctx.counters.sent_429 += 1  # Kraken's "429", in an HTTP 200 body
            return web.json_response(error_answer(TOO_MANY_REQUESTS))
        try:
            query = parse_ohlc_query(request.query, ctx.truth)
        except BadQuery as exc:
            return web.json_response(error_answer(str(exc)))
        series = query.series
        self.ohlc_requests.append(OhlcRequest(series.symbol, series.timeframe, query.since, now))
        rows = select_ohlc(ctx.truth, series, now, self.settle)
        committed, forming = rows[:-1], rows[-1:]
        if query.since is not None:
            committed = [c for c in committed if seconds(c.ts) > query.since]
        # `last`: the cursor for polling committed bars, the newest one's time.
        last = seconds(rows[-2].ts if len(rows) > 1 else rows[-1].ts) if rows else 0
        pair = series.symbol if query.display_names else series.symbol.replace("/", "")
        return web.json_response(ohlc_answer(pair, committed + forming, last))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        async with websocket(request, self._ctx) as ws:
            await _Stream(ws, self._ctx).run()
        return ws


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


class _Stream:
    """One `/v2` connection: method messages in, acks, snapshots, updates and heartbeats out."""

    def __init__(self, ws: web.WebSocketResponse, ctx: SimContext) -> None:
        self._ws = ws
        self._ctx = ctx
        self._truth = ctx.truth
        # series -> open time of the bar it was pushing at the last tick
        self._subscribed: dict[SeriesKey, datetime] = {}
        self._second, self._messages = -1, 0  # incoming messages in the current second

    async def run(self) -> None:
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
            return [{"method": "pong", "req_id": req_id, "time_in": rfc3339(time_in),
                     "time_out": rfc3339(self._ctx.clock())}]  # fmt: skip
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

    def _listed(self, series: SeriesKey, now: datetime) -> bool:
        listed = self._truth.listing(series.symbol)
        return listed is not None and listed <= now

    def _forming(self, series: SeriesKey, now: datetime) -> list[Candle]:
        """The bar in progress, if it has seen a trade (updates come on trades)."""
        current = series.tf.floor(now)
        published = self._truth.exists(series, current) and self._truth.traded(series, current)
        if not self._listed(series, now) or not published:
            return []
        return [self._truth.partial(series, current, now)]

    def _snapshot(self, series: SeriesKey, now: datetime) -> list[Candle]:
        """The last closed bar with trades, then the one forming."""
        if not self._listed(series, now):
            return []
        before = self._truth.opens_before(series, series.tf.floor(now))
        traded = (ts for ts in islice(before, HORIZON_ROWS) if self._truth.traded(series, ts))
        last = next(traded, None)
        closed = [] if last is None else [self._truth.bar(series, last)]
        return closed + self._forming(series, now)

    async def _push(self) -> None:
        interval = self._ctx.scenario.update_interval_s
        while not self._ws.closed:
            position = self._ctx.clock().timestamp() / interval
            await asyncio.sleep((int(position) + 1 - position) * interval + _TICK_LAG_S)
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
