"""What every personality's REST side shares: the one HTTP error answer and the
one rate limiter.

`HttpError` is a refusal as a venue answers it: a status and a body in that
venue's shape (each venue's `wire.refusal` builds it). A handler raises it from
anywhere; the routes a personality makes with `get` and `route` turn it into
the handler's response.

`RateLimiter` is each venue's request budget per client, configured by the
personality:

- `budget` weight per `window_s`, in clock-aligned windows (Binance's and
  Alpaca's minute, OANDA's second): every request's weight counts, refused ones
  too, and a client over budget is told to wait (429) until the window ends;
- or, with `burst`, a lazy-fill token bucket (Coinbase): it holds `burst`
  weight and refills `budget` per `window_s`; a refused request takes nothing;
- with `ban_s`, a client that sends again while told to wait is banned (418,
  or `ban_status`) until the ban ends; each further ban doubles, up to
  `max_ban_s`. Requests during a ban are refused and counted but do not extend
  it. Requests that arrive within `IN_FLIGHT_GRACE_S` of a 429 were already on
  their way when it was sent: they get 429 too (marked `in_flight`), not a ban;
- `key` tells clients apart (default: the client's IP address), and each
  request weighs `weight` unless the caller says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from candled.domain.timeframe import EPOCH
from candled_sim.counters import SimCounters

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IN_FLIGHT_GRACE_S = 1.0


class HttpError(Exception):
    """A request the venue refuses: the HTTP status, the body in the venue's
    shape, and any headers the answer carries."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        """The answer to send, with `headers` added to the error's own."""
        merged = {**self.headers, **(headers or {})}
        return web.json_response(self.body, status=self.status, headers=merged)


def _answering(handler: Handler) -> Handler:
    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return exc.response()

    return answered


def get(path: str, handler: Handler) -> web.RouteDef:
    """A GET (and HEAD) route whose handler answers an `HttpError` it raises."""
    return web.get(path, _answering(handler))


def route(method: str, path: str, handler: Handler) -> web.RouteDef:
    """A route for `method` ("*": any) whose handler answers an `HttpError` it raises."""
    return web.route(method, path, _answering(handler))


def client_ip(request: web.Request) -> str:
    """The default client key of a rate limit: the peer's address."""
    return request.remote or "?"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the limiter says about one request, and what its answer's headers report."""

    status: int  # 200 (go ahead), 429 (over budget: wait), or the ban status (418)
    used_weight: int  # weight used in the current window, this request included
    remaining: int  # weight the client may still send in this window
    reset: datetime  # when the window ends (a bucket: when it is full again)
    retry_after_s: int | None = None
    during_ban: bool = False  # the client sent this while banned
    in_flight: bool = False  # a 429 to a request sent before the client could know

    @property
    def admitted(self) -> bool:
        """Whether the request may be served."""
        return self.status == 200


@dataclass(slots=True)
class _Client:
    window: datetime  # start of the current window (a bucket: when it was last filled)
    used: float = 0.0
    wait_until: datetime | None = None  # told to wait (429) until then
    told_at: datetime | None = None  # when the last 429 was sent
    banned_until: datetime | None = None
    bans: int = 0


class RateLimiter:
    """A venue's REST rate limit: request weight per client per window (see the module)."""

    def __init__(
        self,
        budget: int,
        window_s: float = 60.0,
        *,
        burst: int | None = None,
        weight: int = 1,
        ban_s: float | None = None,
        max_ban_s: float | None = None,
        ban_status: int = 418,
        key: Callable[[web.Request], str] = client_ip,
    ) -> None:
        self.budget = budget
        self.weight = weight
        self._window = timedelta(seconds=window_s)
        self._rate = budget / window_s  # a bucket's refill, weight per second
        self._burst = burst
        self._ban_s = ban_s
        self._max_ban_s = ban_s if max_ban_s is None else max_ban_s
        self._ban_status = ban_status
        self._key = key
        self._clients: dict[str, _Client] = {}

    def charge(
        self, request: web.Request, counters: SimCounters, now: datetime, weight: int | None = None
    ) -> Decision:
        """Admit `request` (of `weight`, default the limiter's) for its client and
        count it: weight used, requests during a ban, 429s and 418s sent."""
        weight = self.weight if weight is None else weight
        decision = self.admit(self._key(request), weight, now)
        counters.weight_used += weight
        counters.requests_during_ban += decision.during_ban
        if decision.status == 429:
            counters.sent_429 += 1
            counters.sent_429_in_flight += decision.in_flight
        elif decision.status == 418:
            counters.sent_418 += 1
        return decision

    def admit(self, client: str, weight: int, now: datetime) -> Decision:
        """The decision about one request of `weight` from `client` at `now`."""
        state = self._clients.get(client)
        if state is None:
            start = self._start(now) if self._burst is None else now
            state = self._clients[client] = _Client(start)
        self._refill(state, now)
        if self._burst is None:
            state.used += weight  # a window's weight counts every request, refused ones too
        if state.banned_until is not None and now < state.banned_until:
            return self._decision(self._ban_status, state, now, state.banned_until, during_ban=True)
        if state.wait_until is not None and now < state.wait_until:
            assert state.told_at is not None
            in_flight = (now - state.told_at).total_seconds() < IN_FLIGHT_GRACE_S
            if in_flight or self._ban_s is None:
                return self._decision(429, state, now, state.wait_until, in_flight=in_flight)
            state.bans += 1
            assert self._max_ban_s is not None
            ban_s = min(self._max_ban_s, self._ban_s * 2 ** (state.bans - 1))
            state.banned_until = now + timedelta(seconds=ban_s)
            state.wait_until = None
            return self._decision(self._ban_status, state, now, state.banned_until)
        if self._burst is None:
            if state.used > self.budget:
                state.wait_until, state.told_at = state.window + self._window, now
                return self._decision(429, state, now, state.wait_until)
        elif state.used + weight > self._burst:
            short_s = (state.used + weight - self._burst) / self._rate
            state.wait_until, state.told_at = now + timedelta(seconds=short_s), now
            return self._decision(429, state, now, state.wait_until)
        else:
            state.used += weight
        return self._decision(200, state, now, None)

    def _start(self, now: datetime) -> datetime:
        """The start of the clock-aligned window holding `now`."""
        return EPOCH + (now - EPOCH) // self._window * self._window

    def _refill(self, state: _Client, now: datetime) -> None:
        if self._burst is None:
            window = self._start(now)
            if state.window != window:
                state.window, state.used = window, 0.0
        else:
            elapsed = max(0.0, (now - state.window).total_seconds())
            state.used = max(0.0, state.used - elapsed * self._rate)
            state.window = now

    def _decision(
        self,
        status: int,
        state: _Client,
        now: datetime,
        retry_at: datetime | None,
        *,
        during_ban: bool = False,
        in_flight: bool = False,
    ) -> Decision:
        if self._burst is None:
            remaining = max(0, self.budget - int(state.used))
            reset = state.window + self._window
        else:
            remaining = max(0, math.floor(self._burst - state.used))
            reset = now + timedelta(seconds=state.used / self._rate)
        retry_after_s = None if retry_at is None else _ceil_s(retry_at - now)
        return Decision(status, math.ceil(state.used), remaining, reset, retry_after_s,
                        during_ban, in_flight)  # fmt: skip


def _ceil_s(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))
