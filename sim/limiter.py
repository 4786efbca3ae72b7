"""Binance's REST rate limit: request weight per IP per minute, 429, then 418 bans.

A client over budget gets 429 with Retry-After (until the minute rolls over).
Sending again before that time is up earns an IP ban: 418 with Retry-After
until the ban ends; each further ban doubles, up to `max_ban_s`. Requests
during a ban are answered 418 and counted, but do not extend it. Requests that
arrive within `IN_FLIGHT_GRACE_S` of a 429 were already on their way when it
was sent: they get 429 too (marked `in_flight`), not a ban.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from candled.domain import Timeframe

_MINUTE = Timeframe.parse("1m")
IN_FLIGHT_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    status: int  # 200 (go ahead), 429 or 418
    used_weight: int  # weight used in the current minute, this request included
    retry_after_s: int | None = None
    during_ban: bool = False  # the client sent this while banned
    in_flight: bool = False  # a 429 to a request sent before the client could know


@dataclass(slots=True)
class _Client:
    window: datetime
    used: int = 0
    wait_until: datetime | None = None  # told to wait (429) until then
    told_at: datetime | None = None  # when the last 429 was sent
    banned_until: datetime | None = None
    bans: int = 0


class WeightLimiter:
    def __init__(self, budget: int, ban_s: float, max_ban_s: float) -> None:
        self._budget = budget
        self._ban_s = ban_s
        self._max_ban_s = max_ban_s
        self._clients: dict[str, _Client] = {}

    def admit(self, client: str, weight: int, now: datetime) -> Decision:
        window = _MINUTE.floor(now)
        state = self._clients.setdefault(client, _Client(window))
        if state.window != window:
            state.window, state.used = window, 0
        state.used += weight
        if state.banned_until is not None and now < state.banned_until:
            return Decision(418, state.used, _ceil_s(state.banned_until - now), during_ban=True)
        if state.wait_until is not None and now < state.wait_until:
            assert state.told_at is not None
            if (now - state.told_at).total_seconds() < IN_FLIGHT_GRACE_S:
                return Decision(429, state.used, _ceil_s(state.wait_until - now), in_flight=True)
            state.bans += 1
            ban_s = min(self._max_ban_s, self._ban_s * 2 ** (state.bans - 1))
            state.banned_until = now + timedelta(seconds=ban_s)
            state.wait_until = None
            return Decision(418, state.used, _ceil_s(state.banned_until - now))
        if state.used > self._budget:
            state.wait_until, state.told_at = _MINUTE.next(now), now
            return Decision(429, state.used, _ceil_s(state.wait_until - now))
        return Decision(200, state.used)


def _ceil_s(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))
