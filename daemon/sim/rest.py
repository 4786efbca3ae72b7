"""The simulated exchange's REST API: `/api/v3/klines`, `/api/v3/ping`, `/api/v3/time`."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from aiohttp import web

from daemon.domain import Candle, SeriesKey
from daemon.domain.timeframe import EPOCH, SUPPORTED
from daemon.sim.counters import SimCounters
from daemon.sim.faults import Burst, Dice
from daemon.sim.limiter import Decision, WeightLimiter
from daemon.sim.scenario import Scenario
from daemon.sim.truth import Truth
from daemon.sim.wire import SIM_VENUE, error_body, kline_row, ms

Clock = Callable[[], datetime]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KLINES_WEIGHT = 2
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
_DIGITS = re.compile(r"^[0-9]{1,20}$")


class BadRequest(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass(frozen=True, slots=True)
class KlinesQuery:
    series: SeriesKey
    start: datetime | None
    end: datetime | None  # inclusive, as Binance's endTime
    limit: int


def parse_klines_query(query: Mapping[str, str], truth: Truth) -> KlinesQuery:
    symbol, interval = query.get("symbol", ""), query.get("interval", "")
    for name, value in (("symbol", symbol), ("interval", interval)):
        if not value:
            raise BadRequest(
                -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
            )
    if interval not in SUPPORTED:
        raise BadRequest(-1120, "Invalid interval.")
    if truth.listing(symbol) is None:
        raise BadRequest(-1121, "Invalid symbol.")
    start, end, limit = (_number(query, name) for name in ("startTime", "endTime", "limit"))
    if start is not None and end is not None and start > end:
        raise BadRequest(-1023, "Start time is greater than end time.")
    if limit is not None and limit < 1:
        raise BadRequest(-1130, "Data sent for parameter 'limit' is not valid.")
    return KlinesQuery(
        series=SeriesKey(SIM_VENUE, symbol, interval),
        start=None if start is None else EPOCH + timedelta(milliseconds=start),
        end=None if end is None else EPOCH + timedelta(milliseconds=end),
        limit=min(MAX_LIMIT, DEFAULT_LIMIT if limit is None else limit),  # capped, not refused
    )


def _number(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _DIGITS.match(text):
        raise BadRequest(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(text)


def select_klines(truth: Truth, query: KlinesQuery, now: datetime) -> list[Candle]:
    """Binance's answer: with startTime the oldest bars from there, else the newest.

    Like Binance, the answer includes the bar still open at `now`, with its
    values so far.
    """
    series, tf = query.series, query.series.tf
    listed = truth.listing(series.symbol)
    if listed is None or listed > now:
        return []
    stop = tf.next(now)  # every bar opening before this has opened
    if query.end is not None:
        stop = min(stop, query.end + timedelta(milliseconds=1))
    if query.start is not None:
        opens = list(islice(truth.opens(series, query.start, stop), query.limit))
    else:
        opens = list(islice(truth.opens_before(series, stop), query.limit))[::-1]
    return [
        truth.bar(series, ts) if tf.close_time(ts) <= now else truth.partial(series, ts, now)
        for ts in opens
    ]


class RestApi:
    def __init__(
        self,
        truth: Truth,
        scenario: Scenario,
        counters: SimCounters,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._truth = truth
        self._counters = counters
        self._clock = clock
        self._limiter = WeightLimiter(
            scenario.weight_per_minute, scenario.ban_s, scenario.max_ban_s
        )
        faults = scenario.faults
        self._errors = Burst(Dice(faults.http_errors, rng), faults.http_error_burst)
        self._error_status = faults.http_error_status
        self._resets = Dice(faults.connection_resets, rng)
        self._slow = Dice(faults.slow_responses, rng)
        self._slow_delay_s = faults.slow_delay_s

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v3/klines", self._klines),
            web.get("/api/v3/ping", self._ping),
            web.get("/api/v3/time", self._time),
        ]

    @web.middleware
    async def count_statuses(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        transport = request.transport
        # An answer on a closed connection (a reset fault) never reaches the client.
        if request.path.startswith("/api/") and transport and not transport.is_closing():
            self._counters.requests_by_status[response.status] += 1
        return response

    async def _ping(self, request: web.Request) -> web.Response:
        return self._answer(request, 1, lambda: {})

    async def _time(self, request: web.Request) -> web.Response:
        return self._answer(request, 1, lambda: {"serverTime": ms(self._clock())})

    async def _klines(self, request: web.Request) -> web.StreamResponse:
        decision = self._admit(request, KLINES_WEIGHT)
        if decision.status != 200:
            return self._rate_limited(decision)
        if self._resets.roll():
            self._counters.connection_resets += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response()  # goes nowhere: the connection is gone
        if self._errors.roll():
            self._counters.http_errors_injected += 1
            body = error_body(-1001, "Internal error; unable to process your request.")
            return _json(body, self._error_status, decision)
        if self._slow.roll():
            self._counters.slow_responses += 1
            await asyncio.sleep(self._slow_delay_s)
        try:
            query = parse_klines_query(request.query, self._truth)
        except BadRequest as exc:
            return _json(error_body(exc.code, exc.msg), 400, decision)
        candles = select_klines(self._truth, query, self._clock())
        return _json([kline_row(c) for c in candles], 200, decision)

    def _answer(self, request: web.Request, weight: int, body: Callable[[], Any]) -> web.Response:
        decision = self._admit(request, weight)
        if decision.status != 200:
            return self._rate_limited(decision)
        return _json(body(), 200, decision)

    def _admit(self, request: web.Request, weight: int) -> Decision:
        decision = self._limiter.admit(request.remote or "?", weight, self._clock())
        self._counters.weight_used += weight
        self._counters.requests_during_ban += decision.during_ban
        return decision

    def _rate_limited(self, decision: Decision) -> web.Response:
        if decision.status == 429:
            self._counters.sent_429 += 1
            self._counters.sent_429_in_flight += decision.in_flight
            msg = "Too many requests; please use WebSocket Streams for live updates."
        else:
            self._counters.sent_418 += 1
            msg = "Way too many requests; IP banned. Please use WebSocket Streams."
        return _json(error_body(-1003, msg), decision.status, decision)


def _json(body: Any, status: int, decision: Decision) -> web.Response:
    headers = {"X-MBX-USED-WEIGHT-1M": str(decision.used_weight)}
    if decision.retry_after_s is not None:
        headers["Retry-After"] = str(decision.retry_after_s)
    return web.json_response(body, status=status, headers=headers)
